"""The network edges: what stands between a socket and the core.

* :mod:`pyserve.net.addresses`: which family an address belongs to;
* :mod:`pyserve.net.sockopts`: socket options by name;
* :mod:`pyserve.net.activation`: servers from inherited sockets and systemd activation;
* :mod:`pyserve.net.multicast`: a UDP server that joins multicast groups;
* :mod:`pyserve.net.tls`: TLS on accepted connections, handshake in the worker;
* :mod:`pyserve.net.proxy_header` and :mod:`pyserve.net.proxy`: the PROXY protocol,
  a sans-IO parser and the mix-in that uses it.
"""

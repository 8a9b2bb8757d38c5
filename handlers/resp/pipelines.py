"""Cutting a pipeline of same-shaped commands with a few calls in C.

Theory of operation
-------------------
A pipelining client mostly sends the same command again and again with one word
changing: sixteen ``GET key:000000004711`` with other keys, a queue consumer's
``LPOP jobs`` repeated, ``HSET user:1 field:NNN value`` with other fields. Take
the first command of the buffer, parsed exactly, as a *template*, and one of its
words (not the name) as the *varying* one. If every command in the buffer is the
template with only that word replaced by another of the same length, then each
command ends, and the next begins, with the same bytes: the template's bytes
from after the varying word to its end, followed by its bytes from its start to
the varying word. Call that the *separator*. Splitting the stretch from the first
varying word to the last one at every separator gives the varying words alone.

Why one split is a complete check: the stretch's length is fixed by the number
of commands, so if the split gives exactly one piece per command and no piece
is longer than the template's word, every piece has exactly that length and every
separator sits exactly where the template puts it. Each command is then
byte for byte the template with its own word in place: its array and bulk
headers, its name and its other words are the template's, already checked. A
word containing the separator, a command of another length, another name or
another constant word each make the count or a length disagree, and the
general parser (:mod:`handlers.resp.protocol`) takes the buffer instead. A
command of one word (``PING``) has nothing that varies: a buffer that is that
command repeated, compared in one go, is its run.

A word's bytes may be anything (CR LF included): only lengths and the separator
decide. Only a buffer that holds whole commands, all of the first one's length,
of up to :data:`TEMPLATE_WORDS` words each under 1 KiB, at most
:data:`MAX_TEMPLATE_COMMANDS` of them, is cut this way; anything else (half a
command at the end, a longer pipeline) goes to :func:`cut_uniform` and the loop.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "ARRAY_HEADERS",
    "BULK_HEADERS",
    "MAX_TEMPLATE_COMMANDS",
    "TEMPLATE_WORDS",
    "RunCutter",
    "cut_run",
    "cut_uniform",
]

#: ``$0`` ... ``$1023``: a bulk header is checked by lookup, not by parsing digits.
BULK_HEADERS = [b"$%d" % n for n in range(1024)]
#: ``*1`` ... ``*64`` to their count: array headers recognised by lookup.
ARRAY_HEADERS = {b"*%d" % n: n for n in range(1, 65)}
#: Longest command (in words, the name included) cut from a template.
TEMPLATE_WORDS = 4
#: Most commands a buffer may hold to be cut from a template (a longer one goes the
#: general way, which cuts it in bounded pieces).
MAX_TEMPLATE_COMMANDS = 1024

_FIRST_LINES = 2 * TEMPLATE_WORDS + 1


def _template(buffer: bytes) -> Optional[tuple[list[bytes], int]]:
    """The first command's pieces (``*n``, then header and word by turns) and its
    length in bytes, if it can be a template: up to TEMPLATE_WORDS words, each
    under 1 KiB, its headers right, all of it in ``buffer``."""
    head = buffer.split(b"\r\n", _FIRST_LINES)
    count = ARRAY_HEADERS.get(head[0])
    if count is None or count > TEMPLATE_WORDS:
        return None
    lines = 2 * count + 1
    if len(head) <= lines:
        return None  # the first command is not all here
    try:
        if list(map(BULK_HEADERS.__getitem__, map(len, head[2:lines:2]))) != head[1:lines:2]:
            return None
    except IndexError:  # a word of 1 KiB or more
        return None
    del head[lines:]
    return head, sum(map(len, head)) + 2 * lines


#: A template that cut a run: its bytes before and after its varying word, its
#: length, its words, and the varying word's place among them.
Template = tuple[bytes, bytes, int, list[bytes], int]


class RunCutter:
    """Cuts runs from a template (see the module's text), remembering the last
    template that cut one: a client sends batches of one shape again and again,
    and a buffer whose first command fits that template (the bytes before and
    after its varying word are the template's) is cut without finding and
    checking the template again. The cut itself checks every command as before.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: Optional[Template] = None

    def cut(self, buffer: bytes, commands: list[list[bytes]]) -> int:
        """Append the commands of ``buffer`` if all of them repeat one template
        with one word varying; return how many bytes they took (the whole
        buffer; 0: not such a run, nothing appended)."""
        last = self._last
        if last is not None and buffer.startswith(last[0]):
            prefix, suffix, width, words, place = last
            if buffer.startswith(suffix, len(prefix) + len(words[place])):
                taken = _cut(buffer, commands, last)
                if taken:
                    return taken
        if buffer.count(b"\r\n", 0, 2048) <= _FIRST_LINES:
            return 0  # too few lines for two commands of up to TEMPLATE_WORDS words
        found = _template(buffer)
        if found is None:
            return 0
        head, width = found
        words = head[2::2]
        if len(words) == 1:  # nothing varies: the run repeats its first command
            template = (buffer[:width], b"", width, words, 0)
            taken = _cut(buffer, commands, template)
            if taken:
                self._last = template
            return taken
        start = len(head[0]) + len(head[1]) + len(words[0]) + 6  # the second word's header
        for place in range(1, len(words)):
            start += len(head[2 * place + 1]) + 2  # the word itself
            stop = start + len(words[place])
            prefix = buffer[:start]
            suffix = buffer[stop:width]
            # The second command must fit this template; a cheap look before a split.
            if buffer.startswith(prefix, width) and buffer.startswith(suffix, width + stop):
                template = (prefix, suffix, width, words, place)
                taken = _cut(buffer, commands, template)
                if taken:
                    self._last = template
                    return taken
            start = stop + 2
        return 0


def cut_run(buffer: bytes, commands: list[list[bytes]]) -> int:
    """:meth:`RunCutter.cut` without a memory."""
    return RunCutter().cut(buffer, commands)


def _cut(buffer: bytes, commands: list[list[bytes]], template: Template) -> int:
    """Append the commands of ``buffer`` if it is a run of ``template`` (its
    first command too); return the bytes taken (0: not such a run, nothing
    appended)."""
    prefix, suffix, width, words, place = template
    runs, rest = divmod(len(buffer), width)
    if rest or runs < 2 or runs > MAX_TEMPLATE_COMMANDS:
        return 0  # not whole commands of the first one's length (the usual case cuts them all)
    if not place:  # a command of one word (PING), all of it the prefix
        if buffer != prefix * runs:
            return 0
        name = words[0]
        commands.extend([[name] for _ in range(runs)])
        return width * runs
    # Splitting the stretch from the first varying word to the last at every
    # separator: one piece per command, none longer than the word, proves them all.
    varying = buffer[len(prefix) : len(buffer) - len(suffix)].split(suffix + prefix)
    if (
        len(varying) != runs
        or max(map(len, varying)) != width - len(prefix) - len(suffix)
        or not buffer.endswith(suffix)
    ):
        return 0
    commands.extend(_commands(words, place, varying))
    return runs * width


def _commands(words: list[bytes], place: int, varying: list[bytes]) -> list[list[bytes]]:
    """The template's words with ``varying`` in ``place``, one list per command
    (written out for the usual shapes: a list display is cheaper than unpacking)."""
    if len(words) == 2:
        name = words[0]
        return [[name, word] for word in varying]
    if len(words) == 3:
        name, second, third = words
        if place == 1:
            return [[name, word, third] for word in varying]
        return [[name, second, word] for word in varying]
    if len(words) == 4:
        name, second, third, fourth = words
        if place == 1:
            commands = [[name, word, third, fourth] for word in varying]
        elif place == 2:
            commands = [[name, second, word, fourth] for word in varying]
        else:
            commands = [[name, second, third, word] for word in varying]
        return commands
    before = words[:place]
    after = words[place + 1 :]
    return [[*before, word, *after] for word in varying]


def cut_uniform(
    pieces: list[bytes],
    complete: int,
    commands: list[list[bytes]],
    max_array_length: int,
    max_inline_length: int,
) -> tuple[int, bool]:
    """Take a run of same-shaped commands from a buffer already cut at every CRLF
    (``pieces``, of which the first ``complete`` are terminated); return how many
    pieces it used and whether they are a run (one name, spelled one way, and
    nothing before them in ``commands``).

    Commands of one shape whose words vary in length (``SET key:1 v``, ``SET
    key:10 value``, or N inline ``PING`` lines) are checked and cut with a few
    whole-list operations in C instead of a Python loop per command: the array
    headers are every ``2n+1``-th piece, and the k-th word of every command, and
    its header, are each a slice with the same step (a *column*). A column's
    headers are checked against its words' lengths in one comparison; a column
    that holds one value throughout (the name, a fixed key) needs only a count.
    Anything else uses nothing, and the caller's loop (then the exact parser)
    takes over.
    """
    head = pieces[0]
    count = ARRAY_HEADERS.get(head)
    if count is None:
        return _cut_inline_run(pieces, complete, commands, max_inline_length)
    stride = 2 * count + 1
    usable = complete - complete % stride
    heads = pieces[0:usable:stride]
    runs = len(heads)
    if count > max_array_length or runs < 2 or heads.count(head) != runs:
        return 0, False
    header_for = BULK_HEADERS.__getitem__
    columns = []
    try:
        for place in range(2, stride, 2):
            column = pieces[place:usable:stride]
            headers = pieces[place - 1 : usable : stride]
            if column.count(column[0]) == runs:  # one value throughout
                if headers.count(header_for(len(column[0]))) != runs:
                    return 0, False
            elif list(map(header_for, map(len, column))) != headers:
                return 0, False
            columns.append(column)
    except IndexError:  # a word of 1 KiB or more
        return 0, False
    run = False
    if usable == complete and not commands:
        names = columns[0]
        run = names.count(names[0]) == runs
    if count == 1:
        commands.extend([[value] for value in columns[0]])
    else:
        commands.extend(map(list, zip(*columns)))
    return usable, run


def _cut_inline_run(
    pieces: list[bytes], complete: int, commands: list[list[bytes]], max_inline_length: int
) -> tuple[int, bool]:
    """A run of plain inline commands (no quotes, no ``*``, CRLF-terminated)."""
    lines = pieces[:complete]
    if len(lines) < 2:
        return 0, False
    block = b"".join(lines)  # the CRLFs are gone: any LF left is a bare one
    if block.isalnum() and len(block) <= max_inline_length and b"" not in lines:
        # One word a line (no spaces, quotes, "*" or bare LF): the usual PINGs.
        run = not commands and lines.count(lines[0]) == len(lines)
        commands.extend([[line] for line in lines])
        return complete, run
    if (
        b"*" in block
        or b'"' in block
        or b"'" in block
        or b"\n" in block
        or max(map(len, lines)) > max_inline_length
    ):
        return 0, False
    commands.extend(filter(None, map(bytes.split, lines)))
    return complete, False

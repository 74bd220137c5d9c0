#!/usr/bin/env python3
"""Writes a C header of the .proto's field numbers, one macro a field:
DMB_FIELD_<Message>_<field> N. The fast codec (fastcodec.c) checks each of
its hard-coded tags against these at compile time.

usage: field-numbers.py IN.proto OUT.h"""
import re
import sys

src, out = sys.argv[1], sys.argv[2]
stack = []       # enclosing blocks: a message's name, or None (oneof, enum)
lines = []
for raw in open(src, encoding='utf-8'):
    line = raw.split('//', 1)[0].strip()
    m = re.match(r'(message|oneof|enum)\s+(\w+)\s*\{', line)
    if m:
        stack.append(m.group(2) if m.group(1) == 'message' else
                     ('' if m.group(1) == 'oneof' else None))
        continue
    if line.startswith('}'):
        stack.pop()
        continue
    f = re.match(r'(?:repeated\s+|optional\s+)?[\w.]+\s+(\w+)\s*=\s*(\d+)\s*[;\[]', line)
    if f and stack and stack[-1] is not None:
        msg = next(s for s in reversed(stack) if s)
        lines.append('#define DMB_FIELD_%s_%s %s' % (msg, f.group(1), f.group(2)))
with open(out, 'w', encoding='utf-8') as h:
    h.write('/* Generated from %s by field-numbers.py: do not edit. */\n#pragma once\n\n'
            % src.rsplit('/', 1)[-1])
    h.write('\n'.join(lines) + '\n')

#!/bin/sh
# Lints man pages: groff -ww (all warnings) must print nothing, and each page
# must render to some text. Usage: lint.sh PAGE...
set -u
: "${GROFF:=}"
if [ -z "$GROFF" ]; then
	echo "FAIL: groff is needed to lint the man pages (package groff-base)" >&2
	exit 1
fi
rc=0
for page in "$@"; do
	bad=0
	warnings=$("$GROFF" -ww -z -man "$page" 2>&1)
	if [ -n "$warnings" ]; then
		echo "FAIL: $page:" >&2
		echo "$warnings" >&2
		bad=1
	fi
	lines=$("$GROFF" -man -Tutf8 "$page" 2>/dev/null | grep -c .)
	if [ "$lines" -lt 20 ]; then
		echo "FAIL: $page renders to $lines lines" >&2
		bad=1
	fi
	if [ $bad -eq 0 ]; then echo "ok - $page"; else rc=1; fi
done
exit $rc

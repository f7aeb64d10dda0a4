"""Print a report's verdict rows as sentences (what README.md's result sentences copy, word for word).

python reports/verdict_sentences.py reports/cpu-staleness/summary.json
"""

from __future__ import annotations

import json
import sys

from vespo_cli.compare.markdown import verdict_sentence

if __name__ == "__main__":
    for row in json.loads(open(sys.argv[1]).read())["verdict"]:
        print(verdict_sentence(row))

"""benchmarks/results/claims.md: the seed paper's ablation claims (Fig. 1a-e, 3a-c) at CPU scale, each
with a verdict from a rule fixed before any claims run. The pairing, the rule and the table are
``dtrl.report.claims`` (its docstring states the rule); this is their command line.

    python benchmarks/studies/claims_table.py \\
        --table1 benchmarks/results/table1_cpu/evaluations.csv --claims benchmarks/results/claims \\
        --out benchmarks/results/claims.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibrate_budget import cpu_presets
from dtrl.errors import DtrlError
from dtrl.report.claims import claims_and_rows, write_claims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table1", nargs="+", required=True, help="Table 1's evaluations.csv file(s)")
    parser.add_argument("--claims", default="benchmarks/results/claims",
                        help="folder with <claim>/evaluations.csv, one per claim's report")
    parser.add_argument("--task", default="hopper-random")
    parser.add_argument("--out", default="benchmarks/results/claims.md")
    args = parser.parse_args(argv)
    try:
        rows = claims_and_rows(args.table1, args.claims, args.task, cpu_presets(args.task), args.out)
    except DtrlError as exc:
        raise SystemExit(f"claims_table: {exc}") from None
    command = (f"python benchmarks/studies/claims_table.py --table1 {' '.join(args.table1)} --claims {args.claims} "
               f"--task {args.task} --out {args.out}")
    out = Path(args.out)
    notes = Path(args.claims) / "notes.md"
    write_claims(rows, out, command, notes.read_text() if notes.is_file() else "")
    print(f"wrote {out} and {out.with_suffix('.csv')}: {len(rows)} rows, "
          f"{sum(r['pairs'] for r in rows)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# Every check `make test` runs. Ends with one line: "N passed, N failed" (each notebook, each pytest test and
# each sync check counts once). Exit status is non-zero when anything failed.
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONHASHSEED=0 MPLBACKEND=Agg PYTHONUNBUFFERED=1
passed=0; failed=0
# Every temporary file of the run goes into one folder, checked for leftovers at the end and then removed.
scratch=$(mktemp -d -t diffvqa-test.XXXXXX); export TMPDIR="$scratch"; trap 'rm -rf "$scratch"' EXIT
ok()   { passed=$((passed + $2)); [ "$2" -gt 0 ] && echo "ok: $1"; }
bad()  { failed=$((failed + $2)); [ "$2" -gt 0 ] && echo "FAILED: $1"; }
hashes() { find "$@" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -print0 | sort -z | xargs -0 md5sum; }

echo "== nbdev-export leaves the package unchanged"
before=$(hashes diffvqa); nbdev-export; after=$(hashes diffvqa)
if [ "$before" == "$after" ]; then ok "package in sync with notebooks" 1
else bad "nbdev-export changed diffvqa/ (commit notebooks and export together):" 1; diff <(echo "$before") <(echo "$after") | head -10; fi

echo "== nbdev-clean leaves the notebooks unchanged"
before=$(hashes nbs); nbdev-clean; after=$(hashes nbs)
if [ "$before" == "$after" ]; then ok "notebooks clean" 1
else bad "nbdev-clean changed notebooks (commit them clean):" 1; diff <(echo "$before") <(echo "$after") | head -10; fi

echo "== README.md generated from nbs/index.ipynb"
if python scripts/readme.py --check; then ok "README in sync" 1; else bad "README out of date" 1; fi

echo "== nbdev-test (notebooks; cells flagged slow/cuda are skipped)"
nb_total=$(find nbs -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' -not -name '_*' | wc -l)
log=$(mktemp)
nbdev-test --n-workers 2 --timing 2>&1 | tee "$log"
nb_failed=$(awk '/Tests Failed On The Following Notebooks/{f=1;next} f && /\.ipynb/{n++} END{print n+0}' "$log")
if [ "${PIPESTATUS[0]}" -ne 0 ] && [ "$nb_failed" -eq 0 ]; then nb_failed=$nb_total; fi
ok "notebooks" $((nb_total - nb_failed)); bad "notebooks" "$nb_failed"
rm -f "$log"

echo "== pytest"
xml=$(mktemp --suffix .xml)
pytest -q tests -p no:cacheprovider --basetemp="$scratch/pytest" --junitxml="$xml"; rc=$?
read -r pt pf < <(python - "$xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try: r = ET.parse(sys.argv[1]).getroot()
except Exception: print(0, 1); sys.exit()
s = r if r.tag == 'testsuite' else r.find('testsuite')
t, f, e, sk = (int(s.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped'))
print(t - f - e - sk, f + e)
PY
)
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && [ "$pf" -eq 0 ]; then pf=1; fi
ok "pytest" "$pt"; bad "pytest" "$pf"
rm -f "$xml"

echo "== the checks leave no temporary files behind (pytest's folder, the JVM's perf data and torch's compile cache aside)"
left=$(find "$scratch" -mindepth 1 -maxdepth 1 -not -name pytest -not -name 'hsperfdata_*' -not -name 'torchinductor_*' | head -5)
if [ -z "$left" ]; then ok "no temporary leftovers" 1; else bad "left behind in \$TMPDIR:" 1; echo "$left"; fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

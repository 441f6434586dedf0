#!/bin/sh
# make mutation: mutmut on the functions that guard the README's promises (docs/testing.md).
# Minutes, on purpose not part of CI. Configuration: [tool.mutmut] in pyproject.toml (which
# files are mutated, which tests run); here: which functions, then the kill rate per module.
#
#   tools/mutation.sh            every target below
#   tools/mutation.sh rundir     one target (rundir, discord, env, delivery, objective, runid)
set -eu
cd "$(dirname "$0")/.."
MUTMUT="${MUTMUT:-.venv/bin/mutmut}"

targets() {
    case "$1" in
        rundir)    echo "worker.rundir.x_write_run_dir__* worker.rundir.x__same__* worker.rundir.x__replaceable__*" ;;
        discord)   echo "worker.discord.x__claim__* worker.discord.x_read_record__*" ;;
        env)       echo "worker.sandbox.visible.x_build_env__* worker.sandbox.visible.x_candidate_env__* worker.sandbox.local.sandbox.xǁLocalSandboxǁ_env__*" ;;
        delivery)  echo "worker.delivery.*" ;;
        objective) echo "worker.lifecycle.x_candidate_command__* worker.lifecycle.x_shell_command__* worker.sandbox.daytona.xǁDaytonaSandboxǁexec__* worker.sandbox.local.sandbox.xǁLocalSandboxǁ_argv__*" ;;
        runid)     echo "worker.validation.x_check_run_id__* worker.validation.x_check_candidate_id__* worker.validation.x_contained__* worker.validation.x__shown__*" ;;
        *) echo "unknown target $1" >&2; exit 2 ;;
    esac
}

names=""
for t in ${*:-rundir discord env delivery objective runid}; do
    names="$names $(targets "$t")"
done
# shellcheck disable=SC2086 - the globs go to mutmut, which matches mutant names
"$MUTMUT" run --max-children "${MUTATION_JOBS:-2}" $names || true
.venv/bin/python tools/mutation_report.py $names

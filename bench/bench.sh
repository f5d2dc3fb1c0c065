#!/usr/bin/env bash
# shellcheck disable=SC2016  # the timed snippets are single-quoted on purpose: bash -c expands them
# bench/bench.sh: compare `backstop backup` with tar+zstd, tar+pigz, tar czf,
# restic and borg on one generated corpus, and time the restore baselines.
#
#   bench/bench.sh [--size 1G] [--work DIR] [--runs N] [--cold]
#
#   --size SIZE   corpus size for make-corpus.py (default 1G; e.g. 200M)
#   --work DIR    where the corpus and every output go
#                 (default ${TMPDIR:-/tmp}/backstop-bench; never inside the repo)
#   --runs N      timed runs per tool; the median wall time is reported (default 3)
#   --cold        drop the page cache before every timed run (root only).
#                 Without it runs are warm-cache: the corpus is read once,
#                 untimed, and as root each run's input is also re-read after
#                 a page-cache drop (see settle for why)
#
# Environment:
#   BACKSTOP_BIN  use this backstop binary instead of target/release/backstop
#                 (and do not build it)
#   BORG_ENCRYPTION  borg init -e mode (default: none; see borg_init below)
#
# Progress goes to stderr; stdout is only the Markdown report, so
#   bench/bench.sh --size 1G > report.md
# gives a file that can be pasted into docs/benchmarks.md.
set -euo pipefail

# --- locations ---------------------------------------------------------------

# The repo root is found from this script's own path so the script works from
# any cwd.
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)
# The corpus generator lives beside the repo, in the shared design material.
MAKE_CORPUS=${MAKE_CORPUS:-$ROOT/../shared/bench/make-corpus.py}
GNU_TIME=/usr/bin/time

SIZE=1G
WORK=${TMPDIR:-/tmp}/backstop-bench
RUNS=3
COLD=0

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

usage() {
    sed -n '3,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --size) [ $# -ge 2 ] || die "--size needs a value"; SIZE=$2; shift 2 ;;
            --size=*) SIZE=${1#*=}; shift ;;
            --work) [ $# -ge 2 ] || die "--work needs a value"; WORK=$2; shift 2 ;;
            --work=*) WORK=${1#*=}; shift ;;
            --runs) [ $# -ge 2 ] || die "--runs needs a value"; RUNS=$2; shift 2 ;;
            --runs=*) RUNS=${1#*=}; shift ;;
            --cold) COLD=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
    [[ $SIZE =~ ^[0-9]+(\.[0-9]+)?[KkMmGg]?[Bb]?$ ]] || die "bad --size: $SIZE"
    SIZE=$(printf '%s' "$SIZE" | tr '[:lower:]' '[:upper:]')
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "bad --runs: $RUNS"
    if [ "$COLD" -eq 1 ] && ! is_root; then
        die "--cold needs root (it writes /proc/sys/vm/drop_caches)"
    fi
}

# The work dir must not be inside the repo: the outputs are large and other
# people's `git status` / cargo would trip over them.
setup_work() {
    # Resolve before creating anything, so a bad --work leaves no trace.
    WORK=$(realpath -m -- "$WORK")
    case "$WORK/" in
        "$ROOT"/*) die "--work $WORK is inside the repo ($ROOT); pick a dir outside it" ;;
    esac
    mkdir -p "$WORK"
    WORK=$(cd "$WORK" && pwd -P)
    CORPUS=$WORK/corpus
    OUTS=$WORK/out          # one sub-dir per tool, emptied before each run
    RESTORE=$WORK/restore   # restore target, emptied before each run
    TIMES=$WORK/times       # GNU time output and per-run records
    rm -rf "$OUTS" "$RESTORE" "$TIMES"
    mkdir -p "$OUTS" "$TIMES"
    export WORK CORPUS OUTS RESTORE
}

# Per-run outputs go; the corpus stays for the next invocation.
cleanup() {
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        rm -rf "${OUTS:?}" "${RESTORE:?}" "${TIMES:?}"
    fi
}

# --- tools -------------------------------------------------------------------

have() { command -v "$1" >/dev/null 2>&1; }

# Install the comparison tools that are missing (root only). Without root a
# missing tool is skipped with a note in the report, not an error.
install_tools() {
    local pkgs=() c
    declare -A pkg_of=([pigz]=pigz [zstd]=zstd [restic]=restic [borg]=borgbackup)
    for c in pigz zstd restic borg; do
        have "$c" || pkgs+=("${pkg_of[$c]}")
    done
    [ -x "$GNU_TIME" ] || pkgs+=(time)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    if is_root && have apt-get; then
        log "installing: ${pkgs[*]}"
        # The package lists may be stale or absent; refresh once only if needed.
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2 ||
            { apt-get update >&2 &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2; } ||
            log "apt-get install failed; the missing tools will be skipped"
    else
        log "not root: not installing ${pkgs[*]}; those tools will be skipped"
    fi
    [ -x "$GNU_TIME" ] || die "GNU time ($GNU_TIME) is required (apt-get install time)"
}

# Build backstop when the binary is missing or any source is newer than it.
ensure_backstop() {
    if [ -n "${BACKSTOP_BIN:-}" ]; then
        BACKSTOP=$BACKSTOP_BIN
        [ -x "$BACKSTOP" ] || die "BACKSTOP_BIN=$BACKSTOP is not executable"
    else
        BACKSTOP=$ROOT/target/release/backstop
        local stale=""
        if [ -x "$BACKSTOP" ]; then
            # Only what can change the binary: Rust sources and manifests,
            # not tests/ (snapshot files there change on every test run).
            stale=$(find "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$ROOT/crates" \
                -name tests -prune -o -type f \
                \( -name '*.rs' -o -name Cargo.toml -o -name Cargo.lock \) \
                -newer "$BACKSTOP" -print -quit 2>/dev/null || true)
        fi
        if [ ! -x "$BACKSTOP" ] || [ -n "$stale" ]; then
            have cargo || die "cargo not found and $BACKSTOP is missing or stale"
            log "building backstop (release)${stale:+: $stale is newer than the binary}"
            (cd "$ROOT" && cargo build --release -p backstop-cli >&2)
        fi
    fi
    export BACKSTOP
}

# --- corpus ------------------------------------------------------------------

# The corpus is expensive to make, so it is reused when its marker says it was
# built with the same size. A dir without our marker is never deleted.
ensure_corpus() {
    local marker=$WORK/corpus.marker building=$WORK/corpus.building
    local want="size=$SIZE"
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ -d "$CORPUS" ]; then
        log "reusing corpus $CORPUS ($want)"
    else
        if [ -e "$CORPUS" ] && [ -n "$(ls -A "$CORPUS" 2>/dev/null)" ]; then
            if [ -f "$marker" ] || [ -f "$building" ]; then
                log "removing old corpus ($(cat "$marker" 2>/dev/null || echo unfinished))"
                rm -rf "$CORPUS"
            else
                die "$CORPUS exists without $marker; not deleting it (remove it or use another --work)"
            fi
        fi
        rm -f "$marker"
        : > "$building"
        log "building corpus $CORPUS (--size $SIZE)"
        python3 "$MAKE_CORPUS" "$CORPUS" --size "$SIZE" >&2
        printf '%s\n' "$want" > "$marker"
        rm -f "$building"
    fi
    CORPUS_BYTES=$(tree_bytes "$CORPUS")
    CORPUS_FILES=$(find "$CORPUS" -type f | wc -l)
    CORPUS_MIB=$(awk -v b="$CORPUS_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
}

# Apparent bytes of the regular files under the given paths, each inode counted
# once (the corpus has a hard link; tar and backstop store it once too).
tree_bytes() {
    { find "$@" -type f -printf '%i %s\n' 2>/dev/null || true; } |
        awk '!seen[$1]++ { s += $2 } END { printf "%.0f\n", s }'
}

# --- timing ------------------------------------------------------------------

# Make the next run start from the same state: flush everything earlier steps
# left dirty (so it is not billed to the next tool), then
#   --cold:  drop the whole page cache (and dentries/inodes) so the input is
#            read from disk;
#   warm, as root: drop the page cache and read this run's input and the
#            tools back in, untimed. Why not just warm once: on the VM this
#            was written on, each write-then-delete cycle left the next
#            writes slower (sys time of the same 264 MiB extraction grew
#            0.3 -> 2.9 s over four runs and was back to 0.5 s after
#            `echo 1 > drop_caches`), so tools run later in the script were
#            penalised. Dropping and re-reading gives every run the same
#            warm input and the same page-cache state.
#   warm, not root: nothing more; the one warm-up read at the start stands.
settle() {
    sync
    if [ "$COLD" -eq 1 ]; then
        echo 3 > /proc/sys/vm/drop_caches
    elif is_root; then
        echo 1 > /proc/sys/vm/drop_caches
        warm_inputs
    fi
}

# Read into the page cache what the next timed run reads: the archive or repo
# a restore reads ($SRC), else the corpus; and the tools' own executables
# (borg is Python: --version imports most of it).
warm_inputs() {
    if [ -n "${SRC:-}" ]; then
        find "$SRC" -type f -exec cat {} + > /dev/null
    else
        read_corpus
    fi
    local c
    for c in "$BACKSTOP" zstd pigz gzip tar; do
        have "$c" && "$c" --version > /dev/null 2>&1
    done
    have restic && restic version > /dev/null 2>&1
    have borg && borg --version > /dev/null 2>&1
    return 0
}

# GNU tar skips reading file contents when it sees its output is /dev/null,
# hence the `| cat`.
read_corpus() { tar -cf - -C "$WORK" corpus | cat > /dev/null; }

# Warm-cache mode: read the whole corpus once, untimed, before all runs.
warm_up() {
    [ "$COLD" -eq 1 ] && return 0
    log "warm-up read of the corpus"
    read_corpus
}

# time_once TOOL_CMD SYNC_CMD TIMEFILE
# Runs `bash -c` under GNU time. The sync of the outputs is inside the timed
# command, so every tool is charged for getting its data onto disk. Exit
# status: the tool's own.
#
# Peak RSS: GNU time reports ru_maxrss of the bash it started, which for
# children it has waited for is the peak of the single largest process of
# the tree (not a sum). For pipelines that is the largest of tar / zstd / pigz;
# for backstop, restic and borg it is the tool's own process.
time_once() {
    local tool_cmd=$1 sync_cmd=$2 timefile=$3
    local script="set -uo pipefail; rc=0; { $tool_cmd; } || rc=\$?; { $sync_cmd; } || exit 99; exit \$rc"
    "$GNU_TIME" -f '%e %U %S %M' -o "$timefile" bash -c "$script"
}

# Results, keyed by tool id: "wall cpu rss_kib size_bytes note", or
# "SKIP reason" / "FAIL reason".
declare -A RESULT=()

# bench ID OK_CODES PREP_FN TOOL_CMD SYNC_CMD SIZE_PATH
#   OK_CODES   exit codes counted as success (warnings), e.g. "0 3"
#   PREP_FN    untimed setup run after the output dir is emptied (repo init)
#   TOOL_CMD / SYNC_CMD   bash snippets; $OUT, $WORK, $CORPUS, $BACKSTOP,
#              $RESTORE, $SRC are exported
#   SIZE_PATH  what to measure afterwards (output for backups, the restored
#              tree for restores)
# The outputs of the last run are left in $OUTS/ID for the restore phase.
bench() {
    local id=$1 ok_codes=$2 prep=$3 tool_cmd=$4 sync_cmd=$5 size_path=$6
    local runs_file=$TIMES/$id.runs run rc wall user sys rss cpu size note=""
    export OUT=$OUTS/$id
    : > "$runs_file"
    for run in $(seq 1 "$RUNS"); do
        rm -rf "$OUT" "$RESTORE"
        mkdir -p "$OUT" "$RESTORE"
        "$prep"
        settle
        log "$id: run $run/$RUNS"
        rc=0
        time_once "$tool_cmd" "$sync_cmd" "$TIMES/$id.time" 2> "$TIMES/$id.err" || rc=$?
        if ! [[ " $ok_codes " == *" $rc "* ]]; then
            log "$id: failed with exit $rc; its stderr ends:"
            tail -n 15 "$TIMES/$id.err" >&2
            RESULT[$id]="FAIL exit $rc"
            return 0
        fi
        if [ "$rc" -ne 0 ]; then note="exit $rc (warnings)"; fi
        # GNU time puts "Command exited with non-zero status" first; the
        # numbers are on the last line.
        read -r wall user sys rss < <(tail -n 1 "$TIMES/$id.time")
        cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
        size=$(tree_bytes "$size_path")
        printf '%s %s %s %s\n' "$wall" "$cpu" "$rss" "$size" >> "$runs_file"
        log "$id: wall ${wall}s cpu ${cpu}s rss $((rss / 1024))MiB size $size B"
    done
    # Median by wall time; for an even N the lower middle run. Its CPU, RSS
    # and size are reported with it, so the row is one real run.
    local median
    median=$(sort -n -k1,1 "$runs_file" | sed -n "$(( (RUNS + 1) / 2 ))p")
    RESULT[$id]="$median ${note:-ok}"
    ALL_RUNS[$id]=$(cut -d' ' -f1 "$runs_file" | paste -sd' ' -)
}
declare -A ALL_RUNS=()

skip() { RESULT[$1]="SKIP $2"; log "$1: skipped ($2)"; }

# --- the tools, one prep function each -----------------------------------------

no_prep() { :; }

# restic: always encrypted (it has no plaintext mode); repository format 2 with
# its default "auto" compression (zstd). A fresh repo per run; the cache lives
# in the run's output dir, so it is fresh too and never in $HOME.
export RESTIC_PASSWORD=backstop-bench
restic_init() {
    restic -r "$OUT/repo" --cache-dir "$OUT/cache" init -q >/dev/null
}

# borg: `-e none` by default. backstop and tar do not encrypt, so leaving
# encryption out compares the same work; restic cannot turn it off, so its
# row includes encryption (cheap with AES-NI, but not free). borg still
# hashes chunk ids with SHA-256 under `-e none`. BORG_ENCRYPTION=repokey-blake2
# measures the encrypted variant instead. BORG_BASE_DIR keeps borg's cache
# and keys inside the run's output dir, fresh per run.
export BORG_PASSPHRASE=backstop-bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
BORG_ENCRYPTION=${BORG_ENCRYPTION:-none}
borg_init() {
    export BORG_BASE_DIR=$OUT/base
    borg init -e "$BORG_ENCRYPTION" "$OUT/repo" >/dev/null 2>&1
}

# Restore prep: the restore reads the last backup run's output, which sits in
# $OUTS/<backup id>; only the target dir is fresh.
prep_restore_backstop() { SRC=$(find "$OUTS/backstop-zstd/home/backups" -name '*.tar.zst' | head -n 1); export SRC; }
prep_restore_tarzstd() { export SRC=$OUTS/tar-zstd/corpus.tar.zst; }
prep_restore_restic() { export SRC=$OUTS/restic/repo; }
prep_restore_borg() { export SRC=$OUTS/borg/repo BORG_BASE_DIR=$OUTS/borg/base; }

# Flush every file of an output tree: `sync FILE` fsyncs each one.
SYNC_TREE='find "$OUT" -type f -exec sync {} +'
SYNC_REPO='find "$OUT/repo" -type f -exec sync {} +'

run_backups() {
    bench backstop-zstd "0 3" no_prep \
        '"$BACKSTOP" --home "$OUT/home" -q backup "$CORPUS"' \
        "$SYNC_TREE" "$OUTS/backstop-zstd/home/backups"
    bench backstop-gzip "0 3" no_prep \
        '"$BACKSTOP" --home "$OUT/home" -q backup "$CORPUS" --compression gzip' \
        "$SYNC_TREE" "$OUTS/backstop-gzip/home/backups"
    rm -rf "$OUTS/backstop-gzip"

    if have zstd; then
        bench tar-zstd "0" no_prep \
            'tar -cf - -C "$WORK" corpus | zstd -T0 -3 -q -o "$OUT/corpus.tar.zst"' \
            'sync "$OUT/corpus.tar.zst"' "$OUTS/tar-zstd"
    else skip tar-zstd "zstd not installed"; fi

    if have pigz; then
        bench tar-pigz "0" no_prep \
            'tar -cf - -C "$WORK" corpus | pigz > "$OUT/corpus.tar.gz"' \
            'sync "$OUT/corpus.tar.gz"' "$OUTS/tar-pigz"
        rm -rf "$OUTS/tar-pigz"
    else skip tar-pigz "pigz not installed"; fi

    bench tar-gzip "0" no_prep \
        'tar czf "$OUT/corpus.tar.gz" -C "$WORK" corpus' \
        'sync "$OUT/corpus.tar.gz"' "$OUTS/tar-gzip"
    rm -rf "$OUTS/tar-gzip"

    # restic exits 3 when some source files could not be read: a warning.
    if have restic; then
        bench restic "0 3" restic_init \
            'cd "$WORK" && restic -r "$OUT/repo" --cache-dir "$OUT/cache" -q backup corpus' \
            "$SYNC_REPO" "$OUTS/restic/repo"
    else skip restic "restic not installed"; fi

    # borg exits 1 for warnings.
    if have borg; then
        bench borg "0 1" borg_init \
            'cd "$WORK" && borg create --compression zstd,3 "$OUT/repo::bench" corpus' \
            "$SYNC_REPO" "$OUTS/borg/repo"
    else skip borg "borg not installed"; fi
}

# Restores. backstop restores its archive into a fresh directory (no
# safety backup: there is nothing to protect), verifying every checksum on
# the way; GNU tar extracting the same archive shows what the format alone
# costs. Each restore ends with a plain `sync` (one syncfs for everything
# written) because fsyncing each of thousands of restored files one by one
# would measure `sync` more than the tool.
run_restores() {
    local restored_ok=1
    have zstd || restored_ok=0
    if [[ ${RESULT[backstop-zstd]} != SKIP* && ${RESULT[backstop-zstd]} != FAIL* ]]; then
        bench restore-backstop "0" prep_restore_backstop \
            '"$BACKSTOP" -q --home "$OUT/home" restore "$SRC" --dest "$RESTORE/corpus" --yes --no-pre-backup' \
            'sync' "$RESTORE"
    else skip restore-backstop "no backstop archive"; fi
    if [ "$restored_ok" -eq 1 ] && [[ ${RESULT[backstop-zstd]} != SKIP* && ${RESULT[backstop-zstd]} != FAIL* ]]; then
        bench restore-backstop-tar "0" prep_restore_backstop \
            'tar -I zstd -xf "$SRC" -C "$RESTORE"' 'sync' "$RESTORE"
    else skip restore-backstop-tar "no backstop archive or no zstd"; fi
    if [[ ${RESULT[tar-zstd]} != SKIP* && ${RESULT[tar-zstd]} != FAIL* ]]; then
        bench restore-tar-zstd "0" prep_restore_tarzstd \
            'tar -I zstd -xf "$SRC" -C "$RESTORE"' 'sync' "$RESTORE"
    else skip restore-tar-zstd "no tar+zstd archive"; fi
    if [[ ${RESULT[restic]} != SKIP* && ${RESULT[restic]} != FAIL* ]]; then
        bench restore-restic "0 3" prep_restore_restic \
            'restic -r "$SRC" --cache-dir "$OUTS/restic/cache" -q restore latest --target "$RESTORE"' \
            'sync' "$RESTORE"
    else skip restore-restic "no restic repo"; fi
    if [[ ${RESULT[borg]} != SKIP* && ${RESULT[borg]} != FAIL* ]]; then
        bench restore-borg "0 1" prep_restore_borg \
            'cd "$RESTORE" && borg extract "$SRC::bench"' 'sync' "$RESTORE"
    else skip restore-borg "no borg repo"; fi
}

# --- report ------------------------------------------------------------------

# One Markdown list item with the first line a tool prints about its version,
# in backticks (zstd's banner is wrapped in `***`, which Markdown would eat).
version() {
    if have "$1"; then
        printf -- '- `%s`\n' "$("$@" 2>&1 | head -n 1 | sed 's/^[* ]*//; s/[* ]*$//')"
    else
        printf -- '- %s: not installed\n' "$1"
    fi
}

print_machine() {
    local cpu mem kernel fs
    cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
    kernel=$(uname -sr)
    fs=$(df -PT "$WORK" | awk 'NR == 2 { print $2 " (" $1 ")" }')
    cat <<EOF
### Machine

- CPUs (nproc): $(nproc)
- CPU model: ${cpu:-unknown}
- Memory: $mem
- Kernel: $kernel
- Work dir filesystem: $fs

### Versions

$(version "$BACKSTOP" --version)
$(version zstd --version)
$(version pigz --version)
$(version gzip --version)
$(version tar --version)
$(version restic version)
$(version borg --version)

EOF
}

# row ID LABEL BASE_ID [restore]
# Prints one table row; ratios are against BASE_ID's median run.
row() {
    local id=$1 label=$2 base=$3 kind=${4:-backup}
    local r=${RESULT[$id]:-SKIP not run} b=${RESULT[$base]:-SKIP}
    case "$r" in
        SKIP*|FAIL*)
            case "$r" in SKIP*) r="skipped: ${r#* }" ;; *) r="FAILED: ${r#* }" ;; esac
            if [ "$kind" = restore ]; then
                printf '| %s | %s | | | | | |\n' "$label" "$r"
            else
                printf '| %s | %s | | | | | | | |\n' "$label" "$r"
            fi
            return 0 ;;
    esac
    case "$b" in SKIP*|FAIL*) b="" ;; esac
    awk -v r="$r" -v b="$b" -v label="$label" -v corpus="$CORPUS_BYTES" -v kind="$kind" '
        BEGIN {
            split(r, x, " "); nb = split(b, y, " ")
            wall = x[1]; cpu = x[2]; rss = x[3] / 1024; size = x[4]; note = x[5]
            mib = size / 1048576
            tput = wall > 0 ? corpus / 1048576 / wall : 0
            if (note != "ok") label = label " (" note ")"
            rw = (nb >= 4 && y[1] > 0) ? sprintf("%.2f", wall / y[1]) : "n/a"
            rs = (nb >= 4 && y[4] > 0) ? sprintf("%.3f", size / y[4]) : "n/a"
            if (kind == "restore")
                printf "| %s | %.2f | %.2f | %.1f | %.1f | %.1f | %s |\n",
                    label, wall, cpu, rss, mib, tput, rw
            else
                printf "| %s | %.2f | %.2f | %.1f | %.1f | %.0f | %.1f | %s | %s |\n",
                    label, wall, cpu, rss, mib, size, tput, rw, rs
        }'
}

print_report() {
    local mode
    if [ "$COLD" -eq 1 ]; then
        mode="cold cache (sync + drop_caches before every timed run)"
    else
        if is_root; then
            mode="warm cache (before every run, untimed: sync, drop the page cache, read that run's input and the tools back in)"
        else
            mode="warm cache (corpus read once, untimed, before the runs; sync before every run)"
        fi
    fi
    cat <<EOF
## backstop benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))

Corpus: \`make-corpus.py --size $SIZE\` (seed 7): $CORPUS_FILES files,
$CORPUS_BYTES bytes ($CORPUS_MIB MiB) of regular-file data: apparent sizes,
hard links once, its 64 MiB sparse file at full length (every tool here
reads and stores it as zeros), so more than the nominal $SIZE.
Runs per tool: $RUNS, median by wall time (CPU, RSS and size are from that
same run). Cache: $mode.

EOF
    print_machine
    local hdr='| tool | wall s | CPU s | peak RSS MiB | size MiB | size bytes | throughput MiB/s |'
    cat <<EOF
### Backup, zstd family (ratios against tar + zstd)

$hdr wall / tar+zstd | size / tar+zstd |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
    row backstop-zstd 'backstop backup (zstd -3)' tar-zstd
    row tar-zstd 'tar -cf - \| zstd -T0 -3' tar-zstd
    row restic 'restic backup (auto = zstd, encrypted)' tar-zstd
    row borg "borg create --compression zstd,3 (-e $BORG_ENCRYPTION)" tar-zstd
    cat <<EOF

### Backup, gzip family (ratios against tar + pigz)

$hdr wall / tar+pigz | size / tar+pigz |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
    row backstop-gzip 'backstop backup --compression gzip (-6)' tar-pigz
    row tar-pigz 'tar -cf - \| pigz (-6)' tar-pigz
    row tar-gzip 'tar czf (gzip -6)' tar-pigz
    cat <<EOF

### Restore (ratios against extracting the tar + zstd archive)

\`backstop restore\` restores its archive into a fresh directory, verifying
every checksum (sidecar, every file, structure) on the way; the row below it
is GNU tar extracting the same archive, without checks. "restored MiB" is
what landed on disk (tar also writes the archive's manifest, checksum list
and trailer). Throughput = corpus bytes / wall.

| restore | wall s | CPU s | peak RSS MiB | restored MiB | throughput MiB/s | wall / tar+zstd |
|---|---:|---:|---:|---:|---:|---:|
EOF
    row restore-backstop 'backstop restore (verifies every checksum) + sync' restore-tar-zstd restore
    row restore-backstop-tar 'tar -I zstd -xf (backstop archive) + sync' restore-tar-zstd restore
    row restore-tar-zstd 'tar -I zstd -xf (tar+zstd archive) + sync' restore-tar-zstd restore
    row restore-restic 'restic restore latest + sync' restore-tar-zstd restore
    row restore-borg 'borg extract + sync' restore-tar-zstd restore
    local id
    cat <<EOF

### How this was measured

- Every backup is timed with GNU time around \`bash -c '<tool>; sync <outputs>'\`:
  the outputs are fsynced inside the timed command (\`sync FILE\` for archives,
  every file of the repo for restic and borg, every file under backstop's
  \`--home\`). Restores end with a plain \`sync\`.
- Wall = elapsed; CPU = user + sys of the whole process tree; peak RSS = the
  largest single process of the tree as GNU time reports it (for pipelines:
  the largest of tar / zstd / pigz, not their sum).
- Throughput = corpus bytes / wall. Size = apparent bytes of the output:
  backstop's archive plus its .sha256 sidecar (not its catalog); the whole
  repo dir for restic and borg.
- Each run starts from an empty output dir: a fresh \`--home\` for backstop,
  a fresh repo (init untimed) and cache for restic and borg.
- All wall times (s), in run order:
EOF
    for id in backstop-zstd backstop-gzip tar-zstd tar-pigz tar-gzip restic borg \
              restore-backstop restore-backstop-tar restore-tar-zstd restore-restic restore-borg; do
        [ -n "${ALL_RUNS[$id]:-}" ] && printf '  - %s: %s\n' "$id" "${ALL_RUNS[$id]}"
    done
    return 0
}

# --- main --------------------------------------------------------------------

main() {
    parse_args "$@"
    unset SRC
    setup_work
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    install_tools
    ensure_backstop
    ensure_corpus
    log "corpus: $CORPUS_FILES files, $CORPUS_MIB MiB; $RUNS run(s) per tool; cold=$COLD"
    warm_up
    run_backups
    run_restores
    print_report
    # The report is printed either way; a failed tool still fails the script.
    local id
    for id in "${!RESULT[@]}"; do
        case "${RESULT[$id]}" in FAIL*) log "$id failed; see the report"; exit 1 ;; esac
    done
}

main "$@"

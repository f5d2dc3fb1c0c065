#!/usr/bin/env bash
# shellcheck disable=SC2016  # the timed snippets are single-quoted on purpose: bash -c expands them
# bench/bench.sh: compare `backstop backup` with tar+zstd, tar+pigz, tar czf,
# restic and borg on one generated corpus, and time restores: into an empty
# directory (against the baselines), exact in place over a live copy of the
# corpus after changing 1 % of its files, second backups (incremental) against
# restic's, a chain of seven restored, and (--million) over a tree of one
# million small files. backstop's backup and restore are also timed
# encrypted (age, one X25519 recipient) beside the same unencrypted ones,
# and (issue 14) into and out of an S3 bucket on a moto_server on loopback
# beside the same full backup and restore on the home's local store.
#
#   bench/bench.sh [--size 1G] [--work DIR] [--runs N] [--cold] [--million]
#                  [--only restore|chains|s3]
#
#   --size SIZE   corpus size for make-corpus.py (default 1G; e.g. 200M)
#   --work DIR    where the corpus and every output go
#                 (default ${TMPDIR:-/tmp}/backstop-bench; never inside the repo)
#   --runs N      timed runs per tool; the median wall time is reported (default 3)
#   --cold        drop the page cache before every timed run (root only).
#                 Without it runs are warm-cache: the corpus is read once,
#                 untimed, and as root each run's input is also re-read after
#                 a page-cache drop (see settle for why)
#   --only PHASE  run one phase alone and print only its tables:
#                 restore the restore rows: backstop's backups (plain and
#                         age) and tar + zstd's, their restores into an empty
#                         directory, `tar -x` of backstop's archive, and the
#                         exact restore in place; the other tools skipped
#                 chains  the incremental-chain rows
#                 s3      backup --full and restore on the local store against
#                         the same into and out of a bucket on moto_server
#                         (started on a free loopback port, killed at the end;
#                         skipped with a note when moto_server is missing)
#   --million     also time a tree of 1,000 dirs x 1,000 files of 30-230
#                 bytes (made once, kept in the work dir like the corpus):
#                 backstop backup, restore into an empty dir, and after
#                 changing 10 files restore --dry-run and an exact restore in
#                 place. Off by default: it takes minutes per run
#
# Environment:
#   BACKSTOP_BIN  use this backstop binary instead of target/release/backstop
#                 (and do not build it)
#   BORG_ENCRYPTION  borg init -e mode (default: none; see borg_init below)
#   BENCH_MILLION_DIRS, BENCH_MILLION_FILES  the --million tree's shape
#                 (default 1000 and 1000; e.g. 100 and 100 for a quick try)
#   MOTO_SERVER   the moto_server to start for the s3 rows (default: the
#                 one on PATH, else /opt/backstop-moto/bin/moto_server)
#   BENCH_S3_PART_MIB  the bucket store's part_size_mib (default: none in
#                 the config, so backstop's own default)
#   The s3 rows give backstop AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
#   "testing" (moto accepts any) unless they are set already.
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
MILLION=0
ONLY=""
MILLION_DIRS=${BENCH_MILLION_DIRS:-1000}
MILLION_FILES=${BENCH_MILLION_FILES:-1000}
S3_PART_MIB=${BENCH_S3_PART_MIB:-}

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
            --million) MILLION=1; shift ;;
            --only) [ $# -ge 2 ] || die "--only needs a value"; ONLY=$2; shift 2 ;;
            --only=*) ONLY=${1#*=}; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
    [[ $SIZE =~ ^[0-9]+(\.[0-9]+)?[KkMmGg]?[Bb]?$ ]] || die "bad --size: $SIZE"
    SIZE=$(printf '%s' "$SIZE" | tr '[:lower:]' '[:upper:]')
    [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "bad --runs: $RUNS"
    [[ -z $ONLY || $ONLY == restore || $ONLY == chains || $ONLY == s3 ]] ||
        die "bad --only: $ONLY (the phases that run alone: restore, chains, s3)"
    [[ $MILLION_DIRS =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_MILLION_DIRS: $MILLION_DIRS"
    [[ $MILLION_FILES =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_MILLION_FILES: $MILLION_FILES"
    [[ -z $S3_PART_MIB || $S3_PART_MIB =~ ^[1-9][0-9]*$ ]] || die "bad BENCH_S3_PART_MIB: $S3_PART_MIB"
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
    # Two runs in one work dir would delete each other's outputs (and share
    # the cores): the second one refuses to start. The lock is held on fd 9
    # until the script exits.
    if have flock; then
        exec 9> "$WORK/bench.lock"
        flock -n 9 || die "another bench.sh is running in $WORK (pick another --work, or wait)"
    fi
    CORPUS=$WORK/corpus
    OUTS=$WORK/out          # one sub-dir per tool, emptied before each run
    RESTORE=$WORK/restore   # restore target, emptied before each run
    TIMES=$WORK/times       # GNU time output and per-run records
    EXACT=$WORK/exact       # live copy of the corpus and its home (exact restore)
    MILLION_DIR=$WORK/million  # the --million tree and its home
    CHAIN=$WORK/chain       # live copy, home and restic repo of the chain rows
    CHAIN7=$WORK/chain7     # the chain of seven and a full backup beside it
    export CHAIN CHAIN7     # the timed commands (bash -c) name them
    AGE_KEY=$WORK/age-identity.txt  # the encrypted rows' identity (made untimed)
    S3_DIR=$WORK/s3         # the s3 rows' config and moto_server's log
    S3_CONFIG=$S3_DIR/backstop.toml
    rm -rf "$OUTS" "$RESTORE" "$TIMES" "$EXACT" "${MILLION_DIR:?}/home" "$AGE_KEY" "$S3_DIR"
    mkdir -p "$OUTS" "$TIMES"
    export WORK CORPUS OUTS RESTORE EXACT MILLION_DIR AGE_KEY S3_CONFIG
}

# Per-run outputs go, and moto_server if it runs; the corpus and the
# --million tree stay for the next invocation.
cleanup() {
    stop_moto
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        rm -rf "${OUTS:?}" "${RESTORE:?}" "${TIMES:?}" "${EXACT:?}" "${MILLION_DIR:?}/home" "${AGE_KEY:?}" "${S3_DIR:?}"
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
    # A running moto_server keeps every object over its buffer size in a
    # deleted temporary file: read those back through its open fds, so a
    # restore from the bucket finds its archive as warm as one from a home.
    if [ -n "${MOTO_PID:-}" ] && [ -d "/proc/$MOTO_PID/fd" ]; then
        local fd
        for fd in "/proc/$MOTO_PID/fd"/*; do
            if [ -f "$fd" ]; then cat "$fd" > /dev/null 2>&1 || true; fi
        done
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
#              tree for restores); s3:BUCKET is the bytes of the objects in
#              that bucket of the running moto_server
# The outputs of the last run are left in $OUTS/ID for the restore phase.
#
# PROBE, when set, names a function called untimed right before every timed
# run with "start" and right after it with "stop"; what "stop" prints is kept
# per run, and PROBED[ID] is what it printed for the median run (the s3 rows
# use it for moto_server's own CPU time, which GNU time does not see).
PROBE=""
declare -A PROBED=()
bench() {
    bench_start "$1"
    local run
    for run in $(seq 1 "$RUNS"); do
        bench_once "$run" "$@" || return 0
    done
    bench_finish "$1"
}

# bench_alternating A_ARGS... -- B_ARGS...: two rows whose ratio is a bar
# (a restore and its encrypted twin), timed A B A B … rather than A A A
# B B B, so that a machine whose speed drifts during the script (this
# one's writes swing by several times within an hour) weighs on both
# alike. Each side takes bench's six arguments.
bench_alternating() {
    local a=("${@:1:6}") b=("${@:8:6}") run a_ok=1 b_ok=1
    [ "${7:-}" = "--" ] || die "bench_alternating: A's six arguments, --, then B's"
    bench_start "${a[0]}"
    bench_start "${b[0]}"
    for run in $(seq 1 "$RUNS"); do
        if [ "$a_ok" -eq 1 ]; then bench_once "$run" "${a[@]}" || a_ok=0; fi
        if [ "$b_ok" -eq 1 ]; then bench_once "$run" "${b[@]}" || b_ok=0; fi
    done
    if [ "$a_ok" -eq 1 ]; then bench_finish "${a[0]}"; fi
    if [ "$b_ok" -eq 1 ]; then bench_finish "${b[0]}"; fi
}

declare -A NOTE=()
bench_start() {
    : > "$TIMES/$1.runs"
    : > "$TIMES/$1.probe"
    NOTE[$1]=""
}

# bench_once RUN ID OK_CODES PREP_FN TOOL_CMD SYNC_CMD SIZE_PATH: one timed
# run, its figures appended to the ID's runs; fails once it has recorded a
# failure.
bench_once() {
    local run=$1 id=$2 ok_codes=$3 prep=$4 tool_cmd=$5 sync_cmd=$6 size_path=$7
    local rc wall user sys rss cpu size
    export OUT=$OUTS/$id
    rm -rf "$OUT" "$RESTORE"
    mkdir -p "$OUT" "$RESTORE"
    "$prep"
    settle
    log "$id: run $run/$RUNS"
    rc=0
    if [ -n "$PROBE" ]; then "$PROBE" start; fi
    time_once "$tool_cmd" "$sync_cmd" "$TIMES/$id.time" 2> "$TIMES/$id.err" || rc=$?
    if [ -n "$PROBE" ]; then "$PROBE" stop >> "$TIMES/$id.probe"; fi
    if ! [[ " $ok_codes " == *" $rc "* ]]; then
        log "$id: failed with exit $rc; its stderr ends:"
        tail -n 15 "$TIMES/$id.err" >&2
        RESULT[$id]="FAIL exit $rc"
        return 1
    fi
    if [ "$rc" -ne 0 ]; then NOTE[$id]="exit $rc (warnings)"; fi
    # GNU time puts "Command exited with non-zero status" first; the
    # numbers are on the last line.
    read -r wall user sys rss < <(tail -n 1 "$TIMES/$id.time")
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    case "$size_path" in
        s3:*) size=$(bucket_bytes "${size_path#s3:}") ;;
        *) size=$(tree_bytes "$size_path") ;;
    esac
    printf '%s %s %s %s\n' "$wall" "$cpu" "$rss" "$size" >> "$TIMES/$id.runs"
    log "$id: wall ${wall}s cpu ${cpu}s rss $((rss / 1024))MiB size $size B"
}

# bench_finish ID: the ID's row, from its runs.
bench_finish() {
    local id=$1 runs_file=$TIMES/$1.runs median n
    # Median by wall time; for an even N the lower middle run. Its CPU, RSS
    # and size are reported with it, so the row is one real run.
    median=$(sort -n -k1,1 "$runs_file" | sed -n "$(( (RUNS + 1) / 2 ))p")
    if [ -n "$PROBE" ]; then
        # The same pick by run number (ties by run order), so that the
        # probe's line is the median run's.
        n=$(awk '{ print $1, NR }' "$runs_file" | sort -n -k1,1 -k2,2n |
            sed -n "$(( (RUNS + 1) / 2 ))p" | cut -d' ' -f2)
        median=$(sed -n "${n}p" "$runs_file")
        PROBED[$id]=$(sed -n "${n}p" "$TIMES/$id.probe")
    fi
    RESULT[$id]="$median ${NOTE[$id]:-ok}"
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
prep_restore_backstop_age() { SRC=$(find "$OUTS/backstop-age/home/backups" -name '*.tar.zst.age' | head -n 1); export SRC; }

# The encrypted rows' key: a fresh X25519 identity from `backstop key new`
# (untimed), its recipient read from the file's "# public key:" line.
make_age_key() {
    "$BACKSTOP" -q key new --out "$AGE_KEY" > /dev/null 2>&1
    AGE_RECIPIENT=$(sed -n 's/^# public key: //p' "$AGE_KEY")
    [[ $AGE_RECIPIENT == age1* ]] || die "backstop key new wrote no recipient to $AGE_KEY"
    export AGE_RECIPIENT
}
prep_restore_tarzstd() { export SRC=$OUTS/tar-zstd/corpus.tar.zst; }
prep_restore_restic() { export SRC=$OUTS/restic/repo; }
prep_restore_borg() { export SRC=$OUTS/borg/repo BORG_BASE_DIR=$OUTS/borg/base; }

# Flush every file of an output tree: `sync FILE` fsyncs each one.
SYNC_TREE='find "$OUT" -type f -exec sync {} +'
SYNC_REPO='find "$OUT/repo" -type f -exec sync {} +'

run_tar_zstd() {
    if have zstd; then
        bench tar-zstd "0" no_prep \
            'tar -cf - -C "$WORK" corpus | zstd -T0 -3 -q -o "$OUT/corpus.tar.zst"' \
            'sync "$OUT/corpus.tar.zst"' "$OUTS/tar-zstd"
    else skip tar-zstd "zstd not installed"; fi
}

run_backups() {
    make_age_key
    # The encrypted backup's bar is a ratio to the plain one: alternated.
    bench_alternating backstop-zstd "0 3" no_prep \
        '"$BACKSTOP" --home "$OUT/home" -q backup "$CORPUS"' \
        "$SYNC_TREE" "$OUTS/backstop-zstd/home/backups" -- \
        backstop-age "0 3" no_prep \
        '"$BACKSTOP" --home "$OUT/home" -q backup "$CORPUS" --recipient "$AGE_RECIPIENT"' \
        "$SYNC_TREE" "$OUTS/backstop-age/home/backups"
    if [ "$ONLY" = restore ]; then
        # Only what the restore rows read: backstop's archives and tar's.
        local id
        for id in backstop-gzip tar-pigz tar-gzip restic borg; do
            skip "$id" "not run with --only restore"
        done
        run_tar_zstd
        return
    fi
    bench backstop-gzip "0 3" no_prep \
        '"$BACKSTOP" --home "$OUT/home" -q backup "$CORPUS" --compression gzip' \
        "$SYNC_TREE" "$OUTS/backstop-gzip/home/backups"
    rm -rf "$OUTS/backstop-gzip"

    run_tar_zstd

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
    local plain=(restore-backstop "0" prep_restore_backstop
        '"$BACKSTOP" -q --home "$OUT/home" restore "$SRC" --dest "$RESTORE/corpus" --yes --no-pre-backup'
        'sync' "$RESTORE")
    local sealed=(restore-backstop-age "0" prep_restore_backstop_age
        '"$BACKSTOP" -q --home "$OUT/home" restore "$SRC" --dest "$RESTORE/corpus" --yes --no-pre-backup --identity "$AGE_KEY"'
        'sync' "$RESTORE")
    local have_plain=0 have_sealed=0
    [[ ${RESULT[backstop-zstd]} != SKIP* && ${RESULT[backstop-zstd]} != FAIL* ]] && have_plain=1
    [[ ${RESULT[backstop-age]} != SKIP* && ${RESULT[backstop-age]} != FAIL* ]] && have_sealed=1
    # The encrypted restore's bar is a ratio to the plain one: alternated.
    if [ "$have_plain" -eq 1 ] && [ "$have_sealed" -eq 1 ]; then
        bench_alternating "${plain[@]}" -- "${sealed[@]}"
    else
        if [ "$have_plain" -eq 1 ]; then bench "${plain[@]}"
        else skip restore-backstop "no backstop archive"; fi
        if [ "$have_sealed" -eq 1 ]; then bench "${sealed[@]}"
        else skip restore-backstop-age "no encrypted backstop archive"; fi
    fi
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

# --- restores over a live tree -----------------------------------------------

# What an exact restore must bring back, one line per entry in byte order:
# path, type, mode, owner, link count, symlink target and mtime, and the size
# of everything but directories (a directory's size is the filesystem's
# business: ext4 never shrinks one).
tree_state() {
    (cd "$1" && find . \
        \( -type d -printf '%P\t%y\t%m\t%U:%G\t%n\t\t-\t%T@\n' \) -o \
        -printf '%P\t%y\t%m\t%U:%G\t%n\t%l\t%s\t%T@\n' | LC_ALL=C sort)
}

# check_state WHAT DIR WANT: die unless DIR's tree_state is the one in WANT.
check_state() {
    local what=$1 dir=$2 want=$3 got=$TIMES/$1.state
    tree_state "$dir" > "$got"
    if ! cmp -s "$want" "$got"; then
        log "$what: $dir is not what was backed up (< expected, > found; first lines):"
        diff "$want" "$got" | head -n 20 >&2 || true
        die "$what: the tree after the restore differs from the backup"
    fi
}

# every_nth DIR N: the regular files under DIR (relative paths, byte order),
# every Nth one (the Nth, the 2Nth, ...), NUL-separated: a deterministic,
# evenly spread sample.
every_nth() {
    find "$1" -type f -printf '%P\0' | LC_ALL=C sort -z | sed -zn "$2~$2p"
}

# change_files LIST ROOT: append a line to each file of LIST (NUL-separated,
# relative to ROOT): new content, new size and new mtime, so a restore must
# rewrite them.
change_files() {
    local f
    while IFS= read -r -d '' f; do
        printf 'changed by bench.sh\n' >> "$2/$f"
    done < "$1"
}

# count0 FILE: the number of NUL-separated items in FILE.
count0() { tr -cd '\0' < "$1" | wc -c; }

# backup_untimed HOME DIR: back DIR up as an ad-hoc instance into HOME, and
# print the new backup's id. Exit 3 (warnings) is fine, as in the timed rows.
backup_untimed() {
    local rc=0
    "$BACKSTOP" --home "$1" -q backup "$2" >&2 || rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || die "backstop backup $2 failed with exit $rc"
    backup_id "$1"
}

# backup_id HOME: the id of the newest backup in HOME's catalog.
backup_id() {
    "$BACKSTOP" --home "$1" --json list |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["backups"][0]["id"])'
}

# Exact restore in place. A copy of the corpus (cp -a, untimed) is the live
# tree of an ad-hoc instance, backed up once (untimed) into its own home.
# Before every run, untimed, the tree is checked against the corpus (the
# previous run must have restored it; the first check is of the copy) and
# every 100th regular file gets a line appended; then
# `backstop restore ID --yes --no-pre-backup` is timed: the default for the
# backup's own root is an exact restore into it. The live tree and the home
# sit together under $EXACT, so that warm_inputs (SRC=$EXACT) reads both back
# in: the restore reads the archive and compares every file of the tree.
EXACT_FILES=0
EXACT_CHANGED=0
prep_restore_exact() {
    export SRC=$EXACT
    check_exact
    change_files "$TIMES/exact.changes" "$EXACT/live"
}

# The tree must be the corpus: every entry's metadata, and every file's
# content (diff -r reads both trees).
check_exact() {
    check_state exact "$EXACT/live" "$TIMES/exact.want"
    diff -r --no-dereference -q "$CORPUS" "$EXACT/live" >&2 ||
        die "exact: $EXACT/live differs in content from the corpus"
}

run_exact() {
    log "exact: copying the corpus to $EXACT/live and backing it up (untimed)"
    mkdir -p "$EXACT"
    cp -a "$CORPUS" "$EXACT/live"
    tree_state "$CORPUS" > "$TIMES/exact.want"
    EXACT_ID=$(backup_untimed "$EXACT/home" "$EXACT/live")
    export EXACT_ID
    every_nth "$EXACT/live" 100 > "$TIMES/exact.changes"
    EXACT_FILES=$(find "$EXACT/live" -type f | wc -l)
    EXACT_CHANGED=$(count0 "$TIMES/exact.changes")
    log "exact: backup $EXACT_ID; $EXACT_CHANGED of $EXACT_FILES files change before every run"
    bench restore-exact "0" prep_restore_exact \
        '"$BACKSTOP" -q --home "$EXACT/home" restore "$EXACT_ID" --yes --no-pre-backup' \
        'sync' "$EXACT/live"
    if [[ ${RESULT[restore-exact]} != FAIL* ]]; then
        check_exact
        log "exact: the live tree matches the corpus"
    fi
    rm -rf "${EXACT:?}"
}

# --- incremental chains (issue 12) -------------------------------------------

# Every chain row starts from a fresh live copy of the corpus (cp -a) that
# backstop and restic have each backed up once, untimed: the timed command
# is the *second* backup into the same home or repository. What it stored
# is the growth of the home's store (the new archive and its sidecar) or of
# the repository, measured against the size saved here.
chain_base() {
    rm -rf "${CHAIN:?}"
    mkdir -p "$CHAIN"
    cp -a "$CORPUS" "$CHAIN/live"
    local rc=0
    "$BACKSTOP" --home "$CHAIN/home" -q backup "$CHAIN/live" >&2 || rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || die "chain: the first backstop backup failed with exit $rc"
    if have restic; then
        restic -r "$CHAIN/repo" --cache-dir "$CHAIN/cache" init -q > /dev/null
        (cd "$CHAIN" && restic -r repo --cache-dir cache -q backup live >&2) || rc=$?
        [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || die "chain: the first restic backup failed with exit $rc"
    fi
    tree_bytes "$CHAIN/home/backups" > "$TIMES/chain.base-backstop"
    if have restic; then tree_bytes "$CHAIN/repo" > "$TIMES/chain.base-restic"; fi
    export SRC=$CHAIN/live
}

# The same, then 1 % of the files changed (a line appended to every 100th)
# and ten others deleted (every 1000th, starting at the 50th).
chain_changed() {
    chain_base
    every_nth "$CHAIN/live" 100 > "$TIMES/chain.changes"
    change_files "$TIMES/chain.changes" "$CHAIN/live"
    find "$CHAIN/live" -type f -printf '%P\0' | LC_ALL=C sort -z | sed -zn '50~1000p' |
        head -z -n 10 > "$TIMES/chain.deletes"
    local f
    while IFS= read -r -d '' f; do rm -f "$CHAIN/live/$f"; done < "$TIMES/chain.deletes"
}

SYNC_CHAIN_HOME='find "$CHAIN/home" -type f -exec sync {} +'
SYNC_CHAIN_REPO='find "$CHAIN/repo" -type f -exec sync {} +'

# stored ID BASE_FILE: bytes the median run of ID added to its store.
stored() {
    local r=${RESULT[$1]:-} base
    base=$(cat "$TIMES/$2" 2>/dev/null || echo 0)
    case "$r" in
        SKIP*|FAIL*|"") echo "" ;;
        *) awk -v r="$r" -v b="$base" 'BEGIN { split(r, x, " "); print x[4] - b }' ;;
    esac
}

# A chain of seven (a full backup and six incrementals, each after another
# 1 % of the files changed) restored into an empty directory, against a full
# backup of the same final tree restored the same way; both restored trees
# are checked against the live tree afterwards.
prep_chain7() { export SRC=$CHAIN7; }
make_chain7() {
    rm -rf "${CHAIN7:?}"
    mkdir -p "$CHAIN7"
    cp -a "$CORPUS" "$CHAIN7/live"
    backup_untimed "$CHAIN7/home" "$CHAIN7/live" > /dev/null
    local k rc=0
    for k in 1 2 3 4 5 6; do
        find "$CHAIN7/live" -type f -printf '%P\0' | LC_ALL=C sort -z |
            sed -zn "$((k * 13))~100p" > "$TIMES/chain7.changes"
        change_files "$TIMES/chain7.changes" "$CHAIN7/live"
        CHAIN7_HEAD=$(backup_untimed "$CHAIN7/home" "$CHAIN7/live")
    done
    "$BACKSTOP" --home "$CHAIN7/fullhome" -q backup "$CHAIN7/live" --full >&2 || rc=$?
    [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || die "chain7: the full backup failed with exit $rc"
    CHAIN7_FULL=$(backup_id "$CHAIN7/fullhome")
    tree_state "$CHAIN7/live" > "$TIMES/chain7.want"
    export CHAIN7_HEAD CHAIN7_FULL
}

check_chain7() {
    check_state "$1" "$RESTORE/corpus" "$TIMES/chain7.want"
    diff -r --no-dereference -q "$CHAIN7/live" "$RESTORE/corpus" >&2 ||
        die "$1: the restored tree differs in content from the live tree"
}

CHAIN_CHANGED=0
CHAIN_DELETED=0
run_chains() {
    log "chain: second backups into the same home / repository"
    bench chain-backstop-same "0 3" chain_base \
        '"$BACKSTOP" --home "$CHAIN/home" -q backup "$CHAIN/live"' \
        "$SYNC_CHAIN_HOME" "$CHAIN/home/backups"
    if have restic; then
        bench chain-restic-same "0 3" chain_base \
            'cd "$CHAIN" && restic -r repo --cache-dir cache -q backup live' \
            "$SYNC_CHAIN_REPO" "$CHAIN/repo"
    else skip chain-restic-same "restic not installed"; fi
    STORED_SAME=$(stored chain-backstop-same chain.base-backstop)
    STORED_SAME_RESTIC=$(stored chain-restic-same chain.base-restic)
    bench chain-backstop-changed "0 3" chain_changed \
        '"$BACKSTOP" --home "$CHAIN/home" -q backup "$CHAIN/live"' \
        "$SYNC_CHAIN_HOME" "$CHAIN/home/backups"
    STORED_CHANGED=$(stored chain-backstop-changed chain.base-backstop)
    CHAIN_CHANGED=$(count0 "$TIMES/chain.changes")
    CHAIN_DELETED=$(count0 "$TIMES/chain.deletes")
    if have restic; then
        bench chain-restic-changed "0 3" chain_changed \
            'cd "$CHAIN" && restic -r repo --cache-dir cache -q backup live' \
            "$SYNC_CHAIN_REPO" "$CHAIN/repo"
    else skip chain-restic-changed "restic not installed"; fi
    STORED_CHANGED_RESTIC=$(stored chain-restic-changed chain.base-restic)
    rm -rf "${CHAIN:?}"

    log "chain: a chain of seven against one full backup"
    make_chain7
    bench restore-chain7 "0" prep_chain7 \
        '"$BACKSTOP" -q --home "$CHAIN7/home" restore "$CHAIN7_HEAD" --dest "$RESTORE/corpus" --yes --no-pre-backup' \
        'sync' "$RESTORE"
    if [[ ${RESULT[restore-chain7]} != FAIL* ]]; then check_chain7 restore-chain7; fi
    bench restore-full7 "0" prep_chain7 \
        '"$BACKSTOP" -q --home "$CHAIN7/fullhome" restore "$CHAIN7_FULL" --dest "$RESTORE/corpus" --yes --no-pre-backup' \
        'sync' "$RESTORE"
    if [[ ${RESULT[restore-full7]} != FAIL* ]]; then check_chain7 restore-full7; fi
    rm -rf "${CHAIN7:?}"
}

# chain_row ID LABEL BASE_ID STORED BASE_STORED
chain_row() {
    local r=${RESULT[$1]:-SKIP not run} b=${RESULT[$3]:-SKIP}
    case "$r" in SKIP*|FAIL*) printf '| %s | %s | | | | | |\n' "$2" "$r"; return 0 ;; esac
    case "$b" in SKIP*|FAIL*) b="" ;; esac
    awk -v r="$r" -v b="$b" -v label="$2" -v st="$4" -v bst="$5" 'BEGIN {
        split(r, x, " "); nb = split(b, y, " ")
        rw = (nb >= 4 && y[1] > 0) ? sprintf("%.2f", x[1] / y[1]) : "n/a"
        rs = (bst > 0) ? sprintf("%.2f", st / bst) : "n/a"
        printf "| %s | %.2f | %.2f | %.1f | %d | %s | %s |\n", label, x[1], x[2], x[3] / 1024, st, rw, rs
    }'
}

print_chains() {
    cat <<EOF

### Incremental chains (issue 12)

Each row starts from a fresh \`cp -a\` of the corpus that backstop and
restic have backed up once, untimed, into their own home / repository; the
timed command is the second backup. "stored" is what that backup added:
the new archive and its sidecar, or the repository's growth. First with
nothing changed, then after a line was appended to $CHAIN_CHANGED files
(every 100th) and $CHAIN_DELETED others were deleted.

| second backup | wall s | CPU s | peak RSS MiB | stored bytes | wall / restic | stored / restic |
|---|---:|---:|---:|---:|---:|---:|
EOF
    chain_row chain-backstop-same 'backstop, nothing changed (incremental)' chain-restic-same "$STORED_SAME" "$STORED_SAME_RESTIC"
    chain_row chain-restic-same 'restic, nothing changed' chain-restic-same "$STORED_SAME_RESTIC" "$STORED_SAME_RESTIC"
    chain_row chain-backstop-changed "backstop, $CHAIN_CHANGED changed and $CHAIN_DELETED deleted (incremental)" chain-restic-changed "$STORED_CHANGED" "$STORED_CHANGED_RESTIC"
    chain_row chain-restic-changed "restic, $CHAIN_CHANGED changed and $CHAIN_DELETED deleted" chain-restic-changed "$STORED_CHANGED_RESTIC" "$STORED_CHANGED_RESTIC"
    cat <<EOF

A chain of seven (a full backup, then six incrementals each after another
1 % of the files changed) restored by its newest backup into an empty
directory, against a full backup of the same final tree restored the same
way; both restored trees are checked against the live tree afterwards.

| restore | wall s | CPU s | peak RSS MiB | restored MiB | throughput MiB/s | wall / one full |
|---|---:|---:|---:|---:|---:|---:|
EOF
    row restore-full7 'backstop restore of one full backup + sync' restore-full7 restore
    row restore-chain7 'backstop restore of a chain of seven + sync' restore-full7 restore
}

# --- off-site stores (issue 14) ----------------------------------------------

# The same full backup (`backup --full`) of the corpus, as a configured
# instance, into the home's own store and into a bucket on a moto_server on
# loopback; then `restore ID --dest EMPTYDIR --yes --no-pre-backup` of the
# last run's backup from each. Every backup run gets a fresh home and, for
# the bucket, a fresh moto_server with an empty bucket (moto keeps objects
# in memory and in deleted temporary files, so old runs' archives would pile
# up); the restores read the last backup run's home and bucket. The restored
# trees are checked against the corpus afterwards, untimed.
S3_BUCKET=backstop-bench
MOTO=""
MOTO_PID=""
MOTO_PORT=""
MOTO_STARTS=0

find_moto() {
    if [ -n "${MOTO_SERVER:-}" ]; then
        MOTO=$MOTO_SERVER
    elif have moto_server; then
        MOTO=$(command -v moto_server)
    elif [ -x /opt/backstop-moto/bin/moto_server ]; then
        MOTO=/opt/backstop-moto/bin/moto_server
    else
        MOTO=""
    fi
    [ -z "$MOTO" ] || [ -x "$MOTO" ]
}

# s3_http METHOD PATH: one unsigned request to the moto_server (moto takes
# them); prints the status on the first line, then the body. Exit 1 when
# nothing answers.
s3_http() {
    python3 - "$1" "http://127.0.0.1:$MOTO_PORT$2" <<'PY'
import sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, method=method, data=b"" if method == "PUT" else None)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError:
    sys.exit(1)
print(status)
sys.stdout.write(body.decode("utf-8", "replace"))
PY
}

# bucket_bytes BUCKET: the bytes of every object in BUCKET (ListObjectsV2,
# page by page).
bucket_bytes() {
    python3 - "http://127.0.0.1:$MOTO_PORT/$1" <<'PY'
import re, sys, urllib.parse, urllib.request
base, total, token = sys.argv[1], 0, None
while True:
    q = {"list-type": "2"}
    if token:
        q["continuation-token"] = token
    with urllib.request.urlopen(base + "?" + urllib.parse.urlencode(q), timeout=30) as r:
        xml = r.read().decode()
    total += sum(int(n) for n in re.findall(r"<Size>(\d+)</Size>", xml))
    m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", xml)
    if "<IsTruncated>true</IsTruncated>" not in xml or not m:
        break
    token = m.group(1)
print(total)
PY
}

# start_moto: a fresh moto_server on a free loopback port, an empty bucket
# on it, and the config naming both. A port taken between choosing and
# binding makes moto exit: then another is tried.
start_moto() {
    stop_moto
    local try i status
    for try in 1 2 3; do
        MOTO_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        MOTO_STARTS=$((MOTO_STARTS + 1))
        # Not holding the work dir's lock (fd 9), should it outlive us.
        "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" > "$S3_DIR/moto.$MOTO_STARTS.log" 2>&1 9>&- &
        MOTO_PID=$!
        for i in $(seq 1 150); do
            kill -0 "$MOTO_PID" 2>/dev/null || break
            if s3_http GET / > /dev/null 2>&1; then break; fi
            sleep 0.2
        done
        if kill -0 "$MOTO_PID" 2>/dev/null && s3_http GET / > /dev/null 2>&1; then
            status=$(s3_http PUT "/$S3_BUCKET" | head -n 1)
            [ "$status" = 200 ] || die "moto_server: creating bucket $S3_BUCKET answered $status"
            write_s3_config
            return 0
        fi
        log "moto_server on port $MOTO_PORT did not come up (try $try, ${i}th wait); its log ends:"
        tail -n 5 "$S3_DIR/moto.$MOTO_STARTS.log" >&2 || true
        stop_moto
    done
    die "moto_server ($MOTO) did not start"
}

stop_moto() {
    if [ -n "${MOTO_PID:-}" ]; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
        MOTO_PID=""
    fi
}

# The config of the s3 rows: instance `bench` keeps its backups in the
# bucket, `bench-local` (the same root and source) in the home's own store;
# `bench-split`, in the bucket, has a source for each of the corpus's
# top-level directories, for the restore of one of them.
write_s3_config() {
    case "$CORPUS" in *"'"*|*$'\n'*) die "the corpus path $CORPUS cannot go into a TOML literal string" ;; esac
    cat > "$S3_CONFIG" <<TOML
[stores.offsite]
url = "s3://$S3_BUCKET/backstop"
endpoint = "http://127.0.0.1:$MOTO_PORT"
region = "us-east-1"
allow_http = true
${S3_PART_MIB:+part_size_mib = $S3_PART_MIB}

[instances.bench]
root = '$CORPUS'
store = "offsite"

[instances.bench.sources]
data = "."

[instances.bench-local]
root = '$CORPUS'

[instances.bench-local.sources]
data = "."

[instances.bench-split]
root = '$CORPUS'
store = "offsite"

[instances.bench-split.sources]
$(for d in "$CORPUS"/*/; do d=$(basename "$d"); printf '%s = "%s"\n' "$d" "$d"; done)
TOML
}

# The PROBE of the s3 rows: moto_server's user + system CPU seconds over
# the timed run ("-" when it is not running).
MOTO_TICKS0=""
moto_cpu() {
    local ticks=""
    if [ -n "$MOTO_PID" ] && [ -r "/proc/$MOTO_PID/stat" ]; then
        # utime and stime, fields 14 and 15: the 12th and 13th after the
        # ")" that ends the command name.
        ticks=$(sed 's/^.*) //' "/proc/$MOTO_PID/stat" | awk '{ print $12 + $13 }')
    fi
    case "$1" in
        start) MOTO_TICKS0=$ticks ;;
        stop)
            if [ -n "$ticks" ] && [ -n "$MOTO_TICKS0" ]; then
                awk -v a="$MOTO_TICKS0" -v b="$ticks" -v hz="$(getconf CLK_TCK)" \
                    'BEGIN { printf "%.2f\n", (b - a) / hz }'
            else
                echo -
            fi ;;
    esac
}

# s3_backup_id HOME: the newest backup in HOME's catalog.
s3_backup_id() {
    "$BACKSTOP" --home "$1" --config "$S3_CONFIG" --json list |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["backups"][0]["id"])'
}

prep_s3_backup_local() { unset SRC; }
prep_s3_backup_s3() { unset SRC; start_moto; }
prep_s3_restore_local() { export SRC=$OUTS/s3-backup-local/home; }
prep_s3_restore_s3() { export SRC=$OUTS/s3-backup-s3/home; }
prep_s3_restore_one() { export SRC=$OUTS/s3-split/home; }

# check_s3_restore ID: the last run's restored tree is the corpus.
check_s3_restore() {
    check_state "$1" "$RESTORE/corpus" "$TIMES/s3.want"
    diff -r --no-dereference -q "$CORPUS" "$RESTORE/corpus" >&2 ||
        die "$1: the restored tree differs in content from the corpus"
    log "$1: the restored tree matches the corpus"
}

run_s3() {
    find_moto || die "MOTO_SERVER=$MOTO is not executable"
    local id
    if [ -z "$MOTO" ]; then
        for id in s3-backup-local s3-backup-s3 s3-restore-local s3-restore-s3 s3-restore-one; do
            skip "$id" "moto_server not installed (pip install 'moto[server]')"
        done
        return 0
    fi
    log "s3: moto_server is $MOTO"
    mkdir -p "$S3_DIR"
    export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-testing}
    export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-testing}
    unset AWS_SESSION_TOKEN AWS_PROFILE
    tree_state "$CORPUS" > "$TIMES/s3.want"
    # The local rows run before any moto_server: their config's endpoint is
    # a port nobody listens on, and never used.
    MOTO_PORT=9
    write_s3_config
    PROBE=moto_cpu

    bench s3-backup-local "0 3" prep_s3_backup_local \
        '"$BACKSTOP" --home "$OUT/home" --config "$S3_CONFIG" -q backup bench-local --full' \
        "$SYNC_TREE" "$OUTS/s3-backup-local/home/backups"
    bench s3-backup-s3 "0 3" prep_s3_backup_s3 \
        '"$BACKSTOP" --home "$OUT/home" --config "$S3_CONFIG" -q backup bench --full' \
        "$SYNC_TREE" "s3:$S3_BUCKET"

    if [[ ${RESULT[s3-backup-local]} != FAIL* ]]; then
        S3_LOCAL_ID=$(s3_backup_id "$OUTS/s3-backup-local/home")
        export S3_LOCAL_ID
        bench s3-restore-local "0" prep_s3_restore_local \
            '"$BACKSTOP" -q --home "$OUTS/s3-backup-local/home" --config "$S3_CONFIG" restore "$S3_LOCAL_ID" --dest "$RESTORE/corpus" --yes --no-pre-backup' \
            'sync' "$RESTORE"
        if [[ ${RESULT[s3-restore-local]} != FAIL* ]]; then check_s3_restore s3-restore-local; fi
    else skip s3-restore-local "the backup failed"; fi
    if [[ ${RESULT[s3-backup-s3]} != FAIL* ]]; then
        S3_ID=$(s3_backup_id "$OUTS/s3-backup-s3/home")
        export S3_ID
        bench s3-restore-s3 "0" prep_s3_restore_s3 \
            '"$BACKSTOP" -q --home "$OUTS/s3-backup-s3/home" --config "$S3_CONFIG" restore "$S3_ID" --dest "$RESTORE/corpus" --yes --no-pre-backup' \
            'sync' "$RESTORE"
        if [[ ${RESULT[s3-restore-s3]} != FAIL* ]]; then check_s3_restore s3-restore-s3; fi
    else skip s3-restore-s3 "the backup failed"; fi
    run_s3_one
    PROBE=""
    stop_moto
    rm -rf "${RESTORE:?}" "${OUTS:?}/s3-backup-local" "${OUTS:?}/s3-backup-s3" "${OUTS:?}/s3-split"
}

# The restore of one small source (`config`) of a backup in the bucket
# that has a source for each top-level directory of the corpus: it fetches
# only the frames that source needs. Its backup (into the moto_server the
# last bucket backup run left) is not timed.
run_s3_one() {
    if [ ! -d "$CORPUS/config" ] || [[ ${RESULT[s3-backup-s3]:-FAIL} == FAIL* ]]; then
        skip s3-restore-one "no bucket backup, or the corpus has no config directory"
        return 0
    fi
    "$BACKSTOP" -q --home "$OUTS/s3-split/home" --config "$S3_CONFIG" backup bench-split --full ||
        die "s3-restore-one: the backup of bench-split failed"
    S3_SPLIT_ID=$(s3_backup_id "$OUTS/s3-split/home")
    export S3_SPLIT_ID
    bench s3-restore-one "0" prep_s3_restore_one \
        '"$BACKSTOP" -q --home "$OUTS/s3-split/home" --config "$S3_CONFIG" restore "$S3_SPLIT_ID" --only config --dest "$RESTORE/one" --yes --no-pre-backup' \
        'sync' "$RESTORE"
    if [[ ${RESULT[s3-restore-one]} != FAIL* ]]; then
        diff -r --no-dereference -q "$CORPUS/config" "$RESTORE/one/config" >&2 ||
            die "s3-restore-one: the restored config differs from the corpus's"
        [ "$(ls "$RESTORE/one")" = config ] ||
            die "s3-restore-one: more than config was restored: $(ls "$RESTORE/one")"
        log "s3-restore-one: the restored config matches the corpus"
    fi
}

# s3_ratio ID BASE_ID: ID's median wall / BASE_ID's, or "".
s3_ratio() {
    local r=${RESULT[$1]:-SKIP} b=${RESULT[$2]:-SKIP}
    case "$r $b" in *SKIP*|*FAIL*) echo ""; return 0 ;; esac
    awk -v r="$r" -v b="$b" 'BEGIN {
        split(r, x, " "); split(b, y, " "); if (y[1] > 0) printf "%.2f\n", x[1] / y[1] }'
}

# s3_row ID LABEL BASE_ID [part]: wall, CPU, RSS, moto's CPU, size or
# restored MiB, throughput (not for a restore of part of the corpus) and
# the ratio to BASE_ID.
s3_row() {
    local r=${RESULT[$1]:-SKIP not run}
    case "$r" in
        SKIP*) printf '| %s | skipped: %s | | | | | | |\n' "$2" "${r#* }"; return 0 ;;
        FAIL*) printf '| %s | FAILED: %s | | | | | | |\n' "$2" "${r#* }"; return 0 ;;
    esac
    awk -v r="$r" -v label="$2" -v ratio="$(s3_ratio "$1" "$3")" -v moto="${PROBED[$1]:--}" \
        -v corpus="$CORPUS_BYTES" -v part="${4:-}" 'BEGIN {
        split(r, x, " ")
        if (x[5] != "ok") label = label " (" x[5] ")"
        tput = x[1] > 0 ? sprintf("%.1f", corpus / 1048576 / x[1]) : "0"
        if (part != "") tput = "-"
        printf "| %s | %.2f | %.2f | %.1f | %s | %.1f | %s | %s |\n", label, x[1], x[2],
            x[3] / 1024, moto, x[4] / 1048576, tput, ratio == "" ? "n/a" : ratio
    }'
}

# s3_bar WHAT ID BASE_ID: the issue's two bars for one operation: wall at
# most 1.3 x the same on the local store, peak RSS under 200 MB (10^6 bytes).
s3_bar() {
    local what=$1 r=${RESULT[$2]:-SKIP not run} b=${RESULT[$3]:-SKIP not run}
    case "$r" in SKIP*|FAIL*)
        case "$r" in SKIP*) r="skipped: ${r#* }" ;; *) r="FAILED: ${r#* }" ;; esac
        printf '| %s ≤ 1.3 × the same on the local store | %s | n/a |\n' "$what" "$r"
        printf '| %s under 200 MB resident | %s | n/a |\n' "$what" "$r"
        return 0 ;;
    esac
    case "$b" in SKIP*|FAIL*) b="" ;; esac
    awk -v r="$r" -v b="$b" -v what="$what" -v ratio="$(s3_ratio "$2" "$3")" 'BEGIN {
        split(r, x, " "); nb = split(b, y, " ")
        if (ratio == "" || nb < 4)
            printf "| %s ≤ 1.3 × the same on the local store | no local row | n/a |\n", what
        else
            printf "| %s ≤ 1.3 × the same on the local store | %s × (%.2f s / %.2f s) | %s |\n",
                what, ratio, x[1], y[1], x[1] <= 1.3 * y[1] ? "yes" : "**no**"
        mb = x[3] * 1024 / 1e6
        base = nb >= 4 ? sprintf("; local store: %.1f MB", y[3] * 1024 / 1e6) : ""
        printf "| %s under 200 MB resident | %.1f MB (%.1f MiB%s) | %s |\n",
            what, mb, x[3] / 1024, base, mb < 200 ? "yes" : "**no**"
    }'
}

print_s3() {
    local moto_v="not installed" part="backstop's default part size"
    if [ -n "$S3_PART_MIB" ]; then part="part_size_mib = $S3_PART_MIB"; fi
    if [ -n "$MOTO" ]; then moto_v="moto $(moto_version)"; fi
    cat <<EOF

### Off-site stores (issue 14)

\`backstop backup NAME --full\` of the corpus as a configured instance (its
root the corpus, one source \`.\`) into the home's own store, against the
same into a bucket (\`s3://$S3_BUCKET/backstop\`, $part) on
a moto_server on loopback ($moto_v; started fresh with an empty bucket
before every bucket backup run, untimed); then \`backstop restore ID --dest
EMPTYDIR --yes --no-pre-backup\` of the last run's backup from each (from
the bucket through ranged GETs), both restored trees checked against the
corpus afterwards. Every backup run has a fresh home. "moto CPU s" is
moto_server's own user + system time during the timed run: it is not in
"CPU s" or "peak RSS" (those are backstop's), but moto shares the
machine's $(nproc) cores with backstop. "MiB" is the archive and its sidecar
(local store) or every object in the bucket for the backups, the restored
tree for the restores; throughput = corpus bytes / wall. The last row
restores one small source (\`config\`) of a backup, in the same bucket,
of an instance with a source for each top-level directory of the corpus
(backed up untimed): it fetches only the frames that source needs. Its
ratio is to the whole restore from the bucket.

| step | wall s | CPU s | peak RSS MiB | moto CPU s | MiB | throughput MiB/s | wall / local store |
|---|---:|---:|---:|---:|---:|---:|---:|
EOF
    s3_row s3-backup-local 'backup --full to the local store + sync' s3-backup-local
    s3_row s3-backup-s3 'backup --full to the bucket (moto, loopback) + sync' s3-backup-local
    s3_row s3-restore-local 'restore from the local store + sync' s3-restore-local
    s3_row s3-restore-s3 'restore from the bucket (moto, loopback) + sync' s3-restore-local
    s3_row s3-restore-one 'restore --only config (one of its sources) from the bucket + sync' s3-restore-s3 part
    cat <<EOF

| bar (issue 14) | result | met? |
|---|---|---|
EOF
    s3_bar 'backup to the bucket' s3-backup-s3 s3-backup-local
    s3_bar 'restore from the bucket' s3-restore-s3 s3-restore-local
}

# The moto package's version, from the Python beside moto_server (a venv's,
# or pyenv's shims), else python3's.
moto_version() {
    local py v
    for py in "$(dirname "$MOTO")/python3" "$(dirname "$MOTO")/python" python3; do
        if v=$("$py" -c 'import moto; print(moto.__version__)' 2>/dev/null); then
            echo "$v"
            return 0
        fi
    done
    echo "version unknown"
}

# --million: a tree of MILLION_DIRS x MILLION_FILES small files, made by the
# generator docs/benchmarks.md shows. Made once and kept, like the corpus,
# under a marker naming its shape; million.dirty says that it was being
# changed and may not have been restored, so it is made again.
MILLION_NFILES=0
MILLION_BYTES=0
MILLION_CHANGED=0
ensure_million() {
    local marker=$WORK/million.marker dirty=$WORK/million.dirty
    local want="dirs=$MILLION_DIRS files=$MILLION_FILES"
    MILLION_TREE=$MILLION_DIR/tree
    if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && [ ! -e "$dirty" ] && [ -d "$MILLION_TREE" ]; then
        log "million: reusing $MILLION_TREE ($want)"
    else
        if [ -e "$MILLION_DIR" ] && [ -n "$(ls -A "$MILLION_DIR" 2>/dev/null)" ]; then
            if [ -f "$marker" ] || [ -f "$dirty" ]; then
                log "million: removing the old tree ($(cat "$marker" 2>/dev/null || echo unfinished))"
                rm -rf "$MILLION_DIR"
            else
                die "$MILLION_DIR exists without $marker; not deleting it (remove it or use another --work)"
            fi
        fi
        rm -f "$marker"
        : > "$dirty"
        log "million: making $MILLION_TREE ($want)"
        mkdir -p "$MILLION_TREE"
        python3 - "$MILLION_TREE" "$MILLION_DIRS" "$MILLION_FILES" <<'EOF'
import os, sys
root, dirs, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    p = f"{root}/dir-{d:04d}/sub"
    os.makedirs(p, exist_ok=True)
    for f in range(files):
        with open(f"{p}/file-with-a-typical-name-{f:05d}.json", "w") as fh:
            fh.write('{"id": %d, "value": "%s"}\n' % (f, "x" * (f % 200)))
EOF
        sync
        printf '%s\n' "$want" > "$marker"
        rm -f "$dirty"
    fi
    MILLION_NFILES=$(find "$MILLION_TREE" -type f | wc -l)
    MILLION_BYTES=$(tree_bytes "$MILLION_TREE")
    export MILLION_TREE
}

# The tree as made, and the changed files as they were before the change,
# saved before anything is changed.
check_million() {
    check_state million "$MILLION_TREE" "$TIMES/million.want"
    local f
    while IFS= read -r -d '' f; do
        cmp -s "$TIMES/million.orig/$f" "$MILLION_TREE/$f" ||
            die "million: $MILLION_TREE/$f differs in content from the backup"
    done < "$TIMES/million.changes"
}

prep_million_backup() { rm -rf "${MILLION_DIR:?}/home"; export SRC=$MILLION_TREE; }
prep_million_tar() { export SRC=$MILLION_TREE; }
prep_million_restore() { export SRC=$MILLION_DIR/home; }
prep_million_dry_run() { export SRC=$MILLION_DIR; }
# The first exact run finds the tree as the dry runs left it, already
# changed; every later one finds what the previous run restored, checks it
# and changes it again.
MILLION_PENDING=0
prep_million_exact() {
    export SRC=$MILLION_DIR
    if [ "$MILLION_PENDING" -eq 1 ]; then MILLION_PENDING=0; return 0; fi
    check_million
    change_files "$TIMES/million.changes" "$MILLION_TREE"
}

# The backup is timed too (its home is $MILLION_DIR/home, beside the tree, so
# that warm_inputs reads both for the restores; the last run's stays); then a
# restore into an empty directory (the ratio base), and with 10 files changed
# `restore --dry-run` (its plan printed in full, to /dev/null) and an exact
# restore in place.
run_million() {
    ensure_million
    log "million: $MILLION_NFILES files, $MILLION_BYTES bytes"
    tree_state "$MILLION_TREE" > "$TIMES/million.want"
    local step=$(( MILLION_NFILES / 10 ))
    [ "$step" -ge 1 ] || step=1
    every_nth "$MILLION_TREE" "$step" > "$TIMES/million.changes"
    MILLION_CHANGED=$(count0 "$TIMES/million.changes")
    mkdir -p "$TIMES/million.orig"
    (cd "$MILLION_TREE" && xargs -0 cp --parents -t "$TIMES/million.orig") < "$TIMES/million.changes"

    bench million-backup "0 3" prep_million_backup \
        '"$BACKSTOP" --home "$MILLION_DIR/home" -q backup "$MILLION_TREE"' \
        'find "$MILLION_DIR/home" -type f -exec sync {} +' "$MILLION_DIR/home/backups"
    if [[ ${RESULT[million-backup]} == FAIL* ]]; then
        skip million-restore-empty "the backup failed"
        skip million-dry-run "the backup failed"
        skip million-exact "the backup failed"
        return 0
    fi
    MILLION_ID=$(backup_id "$MILLION_DIR/home")
    export MILLION_ID
    # The backup's baseline: the same tree through tar and zstd on every core.
    if have zstd; then
        bench million-tar-zstd "0" prep_million_tar \
            'tar -cf - -C "${MILLION_TREE%/*}" "${MILLION_TREE##*/}" | zstd -T0 -3 -q -o "$OUT/million.tar.zst"' \
            'sync "$OUT/million.tar.zst"' "$OUTS/million-tar-zstd"
        rm -rf "${OUTS:?}/million-tar-zstd"
    else skip million-tar-zstd "zstd not installed"; fi
    bench million-restore-empty "0" prep_million_restore \
        '"$BACKSTOP" -q --home "$MILLION_DIR/home" restore "$MILLION_ID" --dest "$RESTORE/tree" --yes --no-pre-backup' \
        'sync' "$RESTORE"
    rm -rf "${RESTORE:?}"

    # From here until it is checked the tree is not as made.
    check_million
    : > "$WORK/million.dirty"
    change_files "$TIMES/million.changes" "$MILLION_TREE"
    MILLION_PENDING=1
    bench million-dry-run "0" prep_million_dry_run \
        '"$BACKSTOP" --home "$MILLION_DIR/home" restore "$MILLION_ID" --dry-run > /dev/null' \
        'sync' "$MILLION_TREE"
    bench million-exact "0" prep_million_exact \
        '"$BACKSTOP" -q --home "$MILLION_DIR/home" restore "$MILLION_ID" --yes --no-pre-backup' \
        'sync' "$MILLION_TREE"
    if [[ ${RESULT[million-exact]} != FAIL* ]]; then
        check_million
        rm -f "$WORK/million.dirty"
        log "million: the tree matches what was backed up"
    fi
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

# row ID LABEL BASE_ID [restore [BYTES]]
# Prints one table row; ratios are against BASE_ID's median run. Throughput
# is BYTES (default: the corpus's) / wall.
row() {
    local id=$1 label=$2 base=$3 kind=${4:-backup} bytes=${5:-$CORPUS_BYTES}
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
    awk -v r="$r" -v b="$b" -v label="$label" -v corpus="$bytes" -v kind="$kind" '
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
    if [ -z "$ONLY" ] || [ "$ONLY" = restore ]; then print_main; fi
    if [ -z "$ONLY" ] || [ "$ONLY" = chains ]; then print_chains; fi
    if [ -z "$ONLY" ] || [ "$ONLY" = s3 ]; then print_s3; fi
    if [ "$MILLION" -eq 1 ]; then print_million; fi
    print_how
}

# The tables of the full run: backups, restores, exact restore, encryption.
print_main() {
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
    cat <<EOF

### Exact restore in place (ratio against restoring into an empty directory)

A copy of the corpus (\`cp -a\`) is backed up once as an ad-hoc instance.
Before every run, untimed, every 100th of its $EXACT_FILES regular files in
byte order ($EXACT_CHANGED files) gets a line appended; then
\`backstop restore ID --yes --no-pre-backup\` makes the tree the backup
again in place (exact mode, the default into the backup's own root),
checking the archive and comparing every file. After every run the tree is
checked against the corpus, untimed: \`diff -r\` of the contents and the
type, mode, owner, link count, size and mtime of every entry. "restored
MiB" is the size of the tree afterwards.

| restore | wall s | CPU s | peak RSS MiB | restored MiB | throughput MiB/s | wall / into empty dir |
|---|---:|---:|---:|---:|---:|---:|
EOF
    row restore-backstop 'backstop restore into an empty directory + sync' restore-backstop restore
    row restore-exact "backstop restore, exact, in place, $EXACT_CHANGED files changed + sync" restore-backstop restore
    cat <<EOF

### Encryption (ratios against the same run unencrypted)

\`backstop backup --recipient R\`: the same zstd -3 archive as one age
stream to one X25519 recipient (made with \`backstop key new\`, untimed),
and its restore into an empty directory with \`--identity\`, each against
the unencrypted row of this same run. The two backups' runs alternate
(unencrypted, encrypted, unencrypted, …), and so do the two restores',
so that a drift in the machine's speed during the script weighs on both.

$hdr wall / unencrypted | size / unencrypted |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
    row backstop-zstd 'backstop backup (zstd -3)' backstop-zstd
    row backstop-age 'backstop backup (zstd -3, age to 1 X25519 recipient)' backstop-zstd
    cat <<EOF

| restore | wall s | CPU s | peak RSS MiB | restored MiB | throughput MiB/s | wall / unencrypted |
|---|---:|---:|---:|---:|---:|---:|
EOF
    row restore-backstop 'backstop restore into an empty directory + sync' restore-backstop restore
    row restore-backstop-age 'backstop restore --identity (encrypted archive) + sync' restore-backstop restore
}

print_how() {
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
    for id in backstop-zstd backstop-age backstop-gzip tar-zstd tar-pigz tar-gzip restic borg \
              restore-backstop restore-backstop-age restore-backstop-tar restore-tar-zstd restore-restic restore-borg \
              restore-exact chain-backstop-same chain-restic-same chain-backstop-changed chain-restic-changed \
              restore-full7 restore-chain7 s3-backup-local s3-backup-s3 s3-restore-local s3-restore-s3 \
              million-backup million-tar-zstd million-restore-empty million-dry-run million-exact; do
        [ -n "${ALL_RUNS[$id]:-}" ] && printf '  - %s: %s\n' "$id" "${ALL_RUNS[$id]}"
    done
    return 0
}

print_million() {
    local mib
    mib=$(awk -v b="$MILLION_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
    cat <<EOF

### Many small files (ratios against restoring into an empty directory)

A tree of $MILLION_DIRS directories x $MILLION_FILES files of 30-230 bytes
($MILLION_NFILES files, $MILLION_BYTES bytes = $mib MiB; the generator in
docs/benchmarks.md, *One million small files*), backed up by backstop
(the last run's backup is the one restored), restored by id into an empty
directory, then with $MILLION_CHANGED files changed (a line appended,
untimed) planned with \`restore --dry-run\` (the plan printed in full, to
/dev/null) and restored exactly in place (\`restore ID --yes
--no-pre-backup\`; before every run after the first the tree is checked,
untimed, and changed again). Afterwards the tree is checked against its
state as made: every entry's metadata and the changed files' contents.
"size MiB" is the archive for the backup and the tree afterwards for the
restores; throughput = the tree's bytes / wall.

The backup against \`tar -cf - | zstd -T0 -3\` + sync of the same tree:

| step | wall s | CPU s | peak RSS MiB | size MiB | throughput MiB/s | wall / tar+zstd |
|---|---:|---:|---:|---:|---:|---:|
EOF
    row million-backup 'backstop backup + sync' million-tar-zstd restore "$MILLION_BYTES"
    row million-tar-zstd 'tar -cf - \| zstd -T0 -3 + sync' million-tar-zstd restore "$MILLION_BYTES"
    cat <<EOF

The restores:

| step | wall s | CPU s | peak RSS MiB | size MiB | throughput MiB/s | wall / into empty dir |
|---|---:|---:|---:|---:|---:|---:|
EOF
    row million-restore-empty 'backstop restore into an empty directory + sync' million-restore-empty restore "$MILLION_BYTES"
    row million-dry-run "backstop restore --dry-run, $MILLION_CHANGED files changed" million-restore-empty restore "$MILLION_BYTES"
    row million-exact "backstop restore, exact, in place, $MILLION_CHANGED files changed + sync" million-restore-empty restore "$MILLION_BYTES"
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
    if [ -z "$ONLY" ] || [ "$ONLY" = restore ]; then
        run_backups
        run_restores
        run_exact
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = chains ]; then run_chains; fi
    if [ -z "$ONLY" ] || [ "$ONLY" = s3 ]; then run_s3; fi
    if [ "$MILLION" -eq 1 ]; then run_million; fi
    print_report
    # The report is printed either way; a failed tool still fails the script.
    local id
    for id in "${!RESULT[@]}"; do
        case "${RESULT[$id]}" in FAIL*) log "$id failed; see the report"; exit 1 ;; esac
    done
}

main "$@"

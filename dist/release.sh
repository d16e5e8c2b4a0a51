#!/usr/bin/env bash
# dist/release.sh — release binaries of Distributary for x86_64 Linux.
#
#   dist/release.sh
#
# Builds `broadcaster`, `reader` and `storage-node` in release mode, statically linked against musl
# (target x86_64-unknown-linux-musl: the binaries run on any x86_64 Linux, no glibc version needed), strips
# them, and writes into dist/out/:
#
#   distributary-<version>-x86_64-linux/            the unpacked release (removed and rebuilt on every run)
#       bin/broadcaster  bin/reader  bin/storage-node
#       web/                                         dash.js for the watch page: BROADCASTER_WEB_DIR=<here>/web
#       README.md  SHA256SUMS                        SHA256SUMS covers every file of the release
#   distributary-<version>-x86_64-linux.tar.gz      the same, packed reproducibly (sorted, fixed mtime/owner)
#   SHA256SUMS                                       the tarball's SHA-256 (verify: cd dist/out && sha256sum -c SHA256SUMS)
#
# <version> is the workspace version (Cargo.toml [workspace.package]). Idempotent: it installs only what is
# missing (the rustup musl target, musl-tools, protoc; dash.js with `npm ci --prefix web`), rebuilds only
# what changed (its own target directory, target/x86_64-unknown-linux-musl, so target/release is untouched),
# and rewrites the outputs. The reader's dash sink also needs ffmpeg on the machine it runs on.
#
# Environment:
#   DIST_TARGET=x86_64-unknown-linux-gnu   build glibc-linked binaries instead (what the script falls back
#                                          to, with a warning, when the musl target cannot be set up)
#   DIST_OUT=dir                           output directory (default dist/out)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '== %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }

OUT=${DIST_OUT:-dist/out}
TARGET=${DIST_TARGET:-x86_64-unknown-linux-musl}
BINS=(broadcaster reader storage-node)

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }

apt_install() {
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "apt-get install $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  else
    return 1
  fi
}

# etcd-client generates its gRPC code with protoc at build time.
command -v protoc >/dev/null || apt_install protobuf-compiler || { echo "protoc is missing (apt-get install protobuf-compiler)" >&2; exit 1; }

if [ "$TARGET" = x86_64-unknown-linux-musl ]; then
  # ring and the bundled SQLite are C: musl-gcc compiles them for the musl target.
  musl_ok=1
  if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    log "rustup target add $TARGET"
    rustup target add "$TARGET" || musl_ok=0
  fi
  if ! command -v musl-gcc >/dev/null; then
    apt_install musl-tools || musl_ok=0
  fi
  if [ "$musl_ok" = 0 ]; then
    warn "cannot set up $TARGET (rustup target or musl-tools missing); building glibc-linked binaries instead"
    TARGET=x86_64-unknown-linux-gnu
  fi
fi

# The watch page's player, served by the broadcaster from BROADCASTER_WEB_DIR.
DASH_JS=node_modules/dashjs/dist/modern/umd/dash.all.min.js
# The index page's resumable uploads.
TUS_JS=node_modules/tus-js-client/dist/tus.min.js
if [ ! -f "web/$DASH_JS" ] || [ ! -f "web/$TUS_JS" ]; then
  command -v npm >/dev/null || apt_install npm || { echo "npm is missing (apt-get install npm)" >&2; exit 1; }
  log "npm ci --prefix web"
  npm ci --prefix web --no-audit --no-fund --loglevel=error
fi

VERSION=$(cargo pkgid -p broadcaster | sed 's/.*[#@]//')
NAME="distributary-$VERSION-x86_64-linux"

log "cargo build --release --target $TARGET (a cold build takes several minutes)"
args=(build --release --locked --target "$TARGET")
for b in "${BINS[@]}"; do args+=(-p "$b"); done
if [ "$TARGET" = x86_64-unknown-linux-musl ]; then
  # The musl target links statically by default (crt-static); musl-gcc compiles the C code for it.
  CC_x86_64_unknown_linux_musl=musl-gcc cargo "${args[@]}" --bins
else
  cargo "${args[@]}" --bins
fi

mkdir -p "$OUT"
STAGE="$OUT/$NAME"
rm -rf "$STAGE" "$OUT/$NAME.tar.gz" "$OUT/SHA256SUMS"
mkdir -p "$STAGE/bin" "$STAGE/web/$(dirname "$DASH_JS")" "$STAGE/web/$(dirname "$TUS_JS")"
for b in "${BINS[@]}"; do
  install -m 0755 "target/$TARGET/release/$b" "$STAGE/bin/$b"
  strip --strip-all "$STAGE/bin/$b"
done
cp web/package.json "$STAGE/web/"
cp "web/$DASH_JS" "$STAGE/web/$DASH_JS"
cp "web/$TUS_JS" "$STAGE/web/$TUS_JS"
for f in web/node_modules/dashjs/LICENSE.md web/node_modules/dashjs/package.json "web/$DASH_JS.LICENSE.txt" \
  web/node_modules/tus-js-client/LICENSE web/node_modules/tus-js-client/package.json; do
  if [ -f "$f" ]; then cp "$f" "$STAGE/$f"; fi
done
cp README.md "$STAGE/"

linkage=()
for b in "${BINS[@]}"; do
  desc=$(file -b "$STAGE/bin/$b")
  if [[ "$desc" == *"statically linked"* || "$desc" == *"static-pie linked"* ]]; then
    linkage+=("$b: static")
  else
    linkage+=("$b: dynamic ($(ldd "$STAGE/bin/$b" 2>/dev/null | awk '{print $1}' | tr '\n' ' '))")
    if [ "$TARGET" = x86_64-unknown-linux-musl ]; then
      echo "$b is not statically linked: $desc" >&2
      exit 1
    fi
  fi
done

(cd "$STAGE" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum >SHA256SUMS)

# Reproducible archive: same inputs, same bytes.
EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
tar --sort=name --mtime="@$EPOCH" --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' \
  -C "$OUT" -cf - "$NAME" | gzip -9 -n >"$OUT/$NAME.tar.gz"
(cd "$OUT" && sha256sum "$NAME.tar.gz" >SHA256SUMS)

echo
echo "Built $NAME for $TARGET:"
for b in "${BINS[@]}"; do
  printf '  %-44s %10s bytes\n' "$STAGE/bin/$b" "$(stat -c %s "$STAGE/bin/$b")"
done
printf '  %-44s %10s bytes\n' "$OUT/$NAME.tar.gz" "$(stat -c %s "$OUT/$NAME.tar.gz")"
echo "  $OUT/SHA256SUMS: $(cat "$OUT/SHA256SUMS")"
echo "Linkage: ${linkage[*]}"
echo "Run: BROADCASTER_WEB_DIR=<unpacked>/web <unpacked>/bin/broadcaster   (the dash reader needs ffmpeg)"

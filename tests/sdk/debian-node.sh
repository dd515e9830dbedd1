#!/usr/bin/env bash
# debian-node.sh COMMAND...: run COMMAND with Debian 12's own Node 18 and
# npm 9.2 first on PATH, as on a stock Debian 12 host, without touching the
# machine's node: Debian's nodejs and libnode108 packages are unpacked (not
# installed) into build/debian-node, npm 9.2.0 (the version Debian 12 ships)
# comes from the npm registry. Debian's node loads some of its built-in
# modules from /usr/share/nodejs (node-acorn, node-cjs-module-lexer,
# node-undici): those pure-JavaScript packages are installed. .ci/run uses it to show that `make deps`, the
# SDK tests and `make run` work there: the SDKs run on the Node pinned in
# tests/sdk/package.json, whatever node is first on PATH.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
dir=$top/build/debian-node

builtins="node-acorn node-cjs-module-lexer node-undici"
for p in $builtins; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" && continue
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $builtins >/dev/null
        break
done

if [ ! -x "$dir/bin/node" ] || [ ! -x "$dir/bin/npm" ]; then
        rm -rf "$dir"
        mkdir -p "$dir/debs" "$dir/bin"
        ver=$(apt-cache madison nodejs | awk '$3 ~ /^18\./ { print $3; exit }')
        if [ -z "$ver" ]; then
                DEBIAN_FRONTEND=noninteractive apt-get update -qq
                ver=$(apt-cache madison nodejs | awk '$3 ~ /^18\./ { print $3; exit }')
        fi
        [ -n "$ver" ] || { echo "debian-node.sh: no Debian nodejs 18 in the apt lists" >&2; exit 1; }
        (cd "$dir/debs" && apt-get download -qq "nodejs=$ver" "libnode108=$ver" 2>/dev/null)
        for d in "$dir"/debs/*.deb; do dpkg-deb -x "$d" "$dir/root"; done
        (cd "$dir" && npm pack --silent npm@9.2.0 >/dev/null && tar xzf npm-9.2.0.tgz && mv package npm)
        cat >"$dir/bin/node" <<EOF
#!/bin/sh
LD_LIBRARY_PATH=$dir/root/usr/lib/x86_64-linux-gnu exec $dir/root/usr/bin/node "\$@"
EOF
        cat >"$dir/bin/npm" <<EOF
#!/bin/sh
exec $dir/bin/node $dir/npm/bin/npm-cli.js "\$@"
EOF
        chmod +x "$dir/bin/node" "$dir/bin/npm"
fi

export PATH=$dir/bin:$PATH
case $(node --version) in
v18.*) ;;
*) echo "debian-node.sh: node on PATH is $(node --version), not Debian's 18" >&2; exit 1 ;;
esac
echo "debian-node.sh: node $(node --version), npm $(npm --version) first on PATH"
exec "$@"

#!/usr/bin/env bash
# Seed the fuzzer's corpus with real configs: the example and every
# broken config of the test corpus (main files and included files).
set -euo pipefail
cd "$(dirname "$0")"
corpus=corpus/config_loader
mkdir -p "$corpus"
cp ../config.example.toml "$corpus/example.toml"
find ../daemon/tests/data/bad-configs -name '*.toml' -type f | while read -r f; do
    cp "$f" "$corpus/$(echo "$f" | sed 's#^\.\./daemon/tests/data/bad-configs/##; s#/#_#g')"
done
echo "seeded $(ls "$corpus" | wc -l) inputs into fuzz/$corpus"

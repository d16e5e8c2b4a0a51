#!/usr/bin/env bash
# Creates the secrets build/docker-compose.yml mounts, once (an existing file is kept):
#   build/secrets/cluster_secret  shared by every service (DISTRIBUTARY_CLUSTER_SECRET_FILE)
#   build/secrets/admin_token     the broadcaster's bootstrap admin token (BROADCASTER_ADMIN_TOKEN_FILE)
# Use the token with: curl -H "Authorization: Bearer $(cat build/secrets/admin_token)" ...
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 700 "$dir"
for name in cluster_secret admin_token; do
  f="$dir/$name"
  if [ ! -s "$f" ]; then
    (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '=+/\n' > "$f")
    echo "created $f"
  fi
done

#!/bin/sh
# One-shot setup of docker-compose.yml's Unleash for `chaosgate connect unleash`, run by
# the unleash-setup service (curlimages/curl) once Unleash is healthy. Unleash cannot
# be configured this way by its own environment, so this does it through its API:
#
#   1. the user `chaosgate` (Editor root role: it may turn flags on and off and edit
#      their strategies, and no more) and its personal access token, written to
#      $TOKEN_FILE for chaosgate-connect ([unleash] token_file). chaosgate does not use
#      the admin token: Unleash records changes made with an INIT_ADMIN_API_TOKENS token
#      as createdBy "admin", the same as the UI's default user `admin`, so with
#      actor = "admin" every change made in the UI would pass as chaosgate's own and
#      never be gated. The PAT's changes are createdBy "chaosgate" (actor below).
#   2. the flag `checkout-v2` in project `default` (routed by deploy/compose/catalog).
#   3. the webhook integration posting flag changes to chaosgate-connect with the
#      secret of $WEBHOOK_TOKEN_FILE in the Authorization header. Unleash caches its
#      list of integrations for 60 s, so the integration acts within a minute.
#
# Safe to run again: existing users, flags and integrations are kept (a new PAT is made).
set -eu

UNLEASH=${UNLEASH:-http://unleash:4242}
ADMIN_TOKEN=${UNLEASH_ADMIN_TOKEN:?UNLEASH_ADMIN_TOKEN (the INIT_ADMIN_API_TOKENS value) is required}
CHAOSGATE_PASSWORD=${CHAOSGATE_PASSWORD:?CHAOSGATE_PASSWORD (the password of the user chaosgate) is required}
WEBHOOK_URL=${WEBHOOK_URL:-http://chaosgate-connect:9466/unleash/webhook}
WEBHOOK_TOKEN_FILE=${WEBHOOK_TOKEN_FILE:-/run/secrets/unleash-webhook-token}
TOKEN_FILE=${TOKEN_FILE:-/var/lib/chaosgate-unleash/token}
FLAG=${FLAG:-checkout-v2}
WORK=$(mktemp -d)

say() { printf 'unleash-setup: %s\n' "$*"; }
die() { printf 'unleash-setup: error: %s\n' "$*" >&2; exit 1; }

# call METHOD PATH [JSON] -> prints the HTTP status; the body is in $WORK/body.
call() {
  if [ $# -ge 3 ]; then
    curl -s -o "$WORK/body" -w '%{http_code}' -X "$1" -H "Authorization: $ADMIN_TOKEN" \
      -H 'Content-Type: application/json' --data "$3" "$UNLEASH$2"
  else
    curl -s -o "$WORK/body" -w '%{http_code}' -X "$1" -H "Authorization: $ADMIN_TOKEN" "$UNLEASH$2"
  fi
}

[ -r "$WEBHOOK_TOKEN_FILE" ] || die "cannot read the webhook secret $WEBHOOK_TOKEN_FILE"
WEBHOOK_TOKEN=$(tr -d '\r\n' <"$WEBHOOK_TOKEN_FILE")
[ -n "$WEBHOOK_TOKEN" ] || die "$WEBHOOK_TOKEN_FILE is empty"

# 1. The user chaosgate and its personal access token.
status=$(call GET /api/admin/user-admin/search?q=chaosgate)
if grep -q '"username":"chaosgate"' "$WORK/body"; then
  say "user chaosgate exists"
else
  status=$(call POST /api/admin/user-admin \
    "{\"username\":\"chaosgate\",\"rootRole\":2,\"password\":\"$CHAOSGATE_PASSWORD\",\"sendEmail\":false}")
  case "$status" in 2*) say "created user chaosgate" ;; *) die "creating user chaosgate: HTTP $status $(cat "$WORK/body")" ;; esac
fi
status=$(curl -s -o "$WORK/body" -w '%{http_code}' -c "$WORK/cookies" -X POST \
  -H 'Content-Type: application/json' \
  --data "{\"username\":\"chaosgate\",\"password\":\"$CHAOSGATE_PASSWORD\"}" "$UNLEASH/auth/simple/login")
case "$status" in 2*) ;; *) die "logging in as chaosgate: HTTP $status $(cat "$WORK/body")" ;; esac
status=$(curl -s -o "$WORK/body" -w '%{http_code}' -b "$WORK/cookies" -X POST \
  -H 'Content-Type: application/json' \
  --data "{\"description\":\"chaosgate-connect $(date -u +%Y%m%dT%H%M%SZ)\",\"expiresAt\":\"2099-01-01T00:00:00Z\"}" \
  "$UNLEASH/api/admin/user/tokens")
case "$status" in 2*) ;; *) die "creating chaosgate's personal access token: HTTP $status $(cat "$WORK/body")" ;; esac
secret=$(sed -n 's/.*"secret":"\([^"]*\)".*/\1/p' "$WORK/body")
[ -n "$secret" ] || die "no secret in the token answer: $(cat "$WORK/body")"
mkdir -p "$(dirname "$TOKEN_FILE")"
umask 022
printf '%s\n' "$secret" >"$TOKEN_FILE.tmp"
mv "$TOKEN_FILE.tmp" "$TOKEN_FILE"
say "wrote chaosgate's personal access token to $TOKEN_FILE"

# 2. The demo flag.
status=$(call POST /api/admin/projects/default/features "{\"name\":\"$FLAG\"}")
case "$status" in
  2*) say "created flag $FLAG in project default" ;;
  409) say "flag $FLAG exists" ;;
  *) die "creating flag $FLAG: HTTP $status $(cat "$WORK/body")" ;;
esac

# 3. The webhook integration.
status=$(call GET /api/admin/addons)
case "$status" in 2*) ;; *) die "listing integrations: HTTP $status $(cat "$WORK/body")" ;; esac
if grep -q '"description":"chaosgate-connect"' "$WORK/body"; then
  say "webhook integration chaosgate-connect exists"
else
  status=$(call POST /api/admin/addons "{\"provider\":\"webhook\",\"enabled\":true,\"description\":\"chaosgate-connect\",\"parameters\":{\"url\":\"$WEBHOOK_URL\",\"authorization\":\"$WEBHOOK_TOKEN\"},\"events\":[\"feature-environment-enabled\",\"feature-environment-disabled\",\"feature-strategy-add\",\"feature-strategy-update\",\"feature-strategy-remove\"],\"projects\":[\"*\"],\"environments\":[\"*\"]}")
  case "$status" in 2*) ;; *) die "creating the webhook integration: HTTP $status $(cat "$WORK/body")" ;; esac
  say "created the webhook integration to $WEBHOOK_URL (acts within 60 s: Unleash caches integrations)"
fi
rm -rf "$WORK"
say "done: turn $FLAG on in environment production (http://127.0.0.1:4242, admin / unleash4all) and watch it gated"

#!/bin/sh
# azd postdeploy hook: subscribe the downstream app's on_manifest blob trigger (Event Grid source)
# to BlobCreated events for images/<id>/manifest.json on the storage account's system topic.
#
# It runs after deploy, not after provision: the blobs extension's system key exists, and Event
# Grid's validation handshake is answered, only once on_manifest runs in the downstream app.
# Idempotent: `event-subscription create` updates a subscription that already exists.
set -eu

for cmd in az azd; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "subscribe-downstream: $cmd is not installed" >&2; exit 1; }
done

# azd passes the environment's values (the Bicep outputs) to hooks; read them again so the
# script also works run by hand after `azd env select`.
eval "$(azd env get-values)"

: "${AZURE_RESOURCE_GROUP:?missing: run azd provision first}"
: "${DOWNSTREAM_FUNCTION_APP_NAME:?missing: run azd provision first}"
: "${EVENT_GRID_SYSTEM_TOPIC_NAME:?missing: run azd provision first}"
: "${IMAGES_CONTAINER:?missing: run azd provision first}"
FUNCTION_NAME="${DOWNSTREAM_FUNCTION_NAME:-on_manifest}"
SUBSCRIPTION_NAME="${DOWNSTREAM_SUBSCRIPTION_NAME:-downstream-manifest-created}"

# The key is a secret: held in a variable, never echoed, and azd output is suppressed below.
key=""
attempt=1
while [ "$attempt" -le 10 ]; do
  key=$(az functionapp keys list -g "$AZURE_RESOURCE_GROUP" -n "$DOWNSTREAM_FUNCTION_APP_NAME" \
    --query "systemKeys.blobs_extension" -o tsv 2>/dev/null || true)
  [ -n "$key" ] && break
  echo "subscribe-downstream: waiting for the blobs_extension key (attempt $attempt of 10)"
  attempt=$((attempt + 1))
  sleep 15
done
if [ -z "$key" ]; then
  echo "subscribe-downstream: $DOWNSTREAM_FUNCTION_APP_NAME has no blobs_extension key;" \
    "is samples/downstream deployed with a blob trigger using source=EventGrid?" >&2
  exit 1
fi

host=$(az functionapp show -g "$AZURE_RESOURCE_GROUP" -n "$DOWNSTREAM_FUNCTION_APP_NAME" \
  --query defaultHostName -o tsv)
endpoint="https://${host}/runtime/webhooks/blobs?functionName=Host.Functions.${FUNCTION_NAME}&code=${key}"

az eventgrid system-topic event-subscription create \
  --name "$SUBSCRIPTION_NAME" \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --system-topic-name "$EVENT_GRID_SYSTEM_TOPIC_NAME" \
  --endpoint-type webhook \
  --endpoint "$endpoint" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with "/blobServices/default/containers/${IMAGES_CONTAINER}/blobs/" \
  --subject-ends-with "/manifest.json" \
  --output none

echo "subscribe-downstream: $SUBSCRIPTION_NAME delivers ${IMAGES_CONTAINER}/*/manifest.json to" \
  "${DOWNSTREAM_FUNCTION_APP_NAME}/${FUNCTION_NAME}"

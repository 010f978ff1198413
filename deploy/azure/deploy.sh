#!/usr/bin/env bash
# Deploy FastFormers Serve to Azure with the az CLI (logged in: `az login`).
#
#   IMAGE=myregistry.azurecr.io/fastformers-serve:sst2 ./deploy.sh vm      one VM (default F16s_v2)
#   IMAGE=... MODELS_URL=https://.../models.tgz ./deploy.sh vmss           scale set + load balancer
#   IMAGE=... ./deploy.sh update      new image/models on the single VM, in place (drains first)
#   IMAGE=... ./deploy.sh vmss        on a scale set: redeploys; a rolling upgrade replaces 20% at a time
#   ./deploy.sh scale 4               scale set to 4 instances (autoscale keeps acting within min/max)
#   ./deploy.sh down                  delete the resource group and everything in it
#
# Settings (environment): RESOURCE_GROUP (fastformers-rg), LOCATION (eastus), NAME (fastformers),
# VM_SIZE (Standard_F16s_v2), IMAGE (required for vm/vmss/update), MODELS_URL (a .tar.gz of the model
# repository, optional when the image has models baked in), API_CPUS (16), SSH_KEY (~/.ssh/id_rsa.pub).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
RESOURCE_GROUP=${RESOURCE_GROUP:-fastformers-rg}
LOCATION=${LOCATION:-eastus}
NAME=${NAME:-fastformers}
VM_SIZE=${VM_SIZE:-Standard_F16s_v2}
MODELS_URL=${MODELS_URL:-}
API_CPUS=${API_CPUS:-16}
SSH_KEY=${SSH_KEY:-$HOME/.ssh/id_rsa.pub}

render_cloud_init() {
    sed -e "s|\${IMAGE}|${IMAGE:?set IMAGE to the serving image}|g" \
        -e "s|\${MODELS_URL}|${MODELS_URL}|g" \
        -e "s|\${API_CPUS}|${API_CPUS}|g" "$here/cloud-init.yaml"
}

deploy() {
    local template=$1
    az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none
    az deployment group create --resource-group "$RESOURCE_GROUP" \
        --template-file "$here/$template.json" \
        --parameters name="$NAME" vmSize="$VM_SIZE" sshPublicKey="$(cat "$SSH_KEY")" \
                     cloudInit="$(render_cloud_init)" \
        --query properties.outputs.apiUrl.value --output tsv
}

update_vm() {
    local script
    script="sed -i 's|^IMAGE=.*|IMAGE=${IMAGE:?set IMAGE}|; s|^MODELS_URL=.*|MODELS_URL=${MODELS_URL}|' /etc/fastformers/env && /usr/local/bin/fastformers-update"
    az vm run-command invoke --resource-group "$RESOURCE_GROUP" --name "$NAME-vm" \
        --command-id RunShellScript --scripts "$script" --output none
}

case ${1:-} in
    vm) deploy vm ;;
    vmss) deploy vmss ;;
    update) update_vm ;;
    scale) az vmss scale --resource-group "$RESOURCE_GROUP" --name "$NAME-vmss" \
               --new-capacity "${2:?instances}" --output none ;;
    down) az group delete --name "$RESOURCE_GROUP" --yes --no-wait ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# A self-signed CA and a certificate for bookinfo.example.test, for the ingress VM's HTTPS port in the demo and the
# molecule scenario (examples/bookinfo/inventory/group_vars/ingress.yml points vmesh_credentials here). Idempotent.
set -euo pipefail
dir="${1:-$(dirname "$0")/../.cache/demo-certs}"
mkdir -p "$dir"
cd "$dir"
if [[ -s bookinfo.crt && -s bookinfo.key && -s ca.crt ]] && openssl x509 -checkend 86400 -noout -in bookinfo.crt >/dev/null; then
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -subj "/CN=vmesh demo CA" -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bookinfo.example.test" \
  -keyout bookinfo.key -out bookinfo.csr 2>/dev/null
printf 'subjectAltName=DNS:bookinfo.example.test\n' > bookinfo.ext
openssl x509 -req -in bookinfo.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile bookinfo.ext \
  -out bookinfo.crt 2>/dev/null
rm -f bookinfo.csr bookinfo.ext
echo "demo certificate for bookinfo.example.test in $dir (CA: $dir/ca.crt)"

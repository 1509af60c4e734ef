#!/bin/sh
# Create fourm's buckets and an S3 user limited to them. Idempotent.
# Env: MINIO_URL, BUCKETS (space-separated), MINIO_ROOT_USER/PASSWORD, FOURM_S3_ACCESS_KEY/SECRET_KEY.
set -eu

tries=0
until mc alias set fourm "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "MinIO at $MINIO_URL did not answer in 5 minutes" >&2
    exit 1
  fi
  sleep 5
done

resources=""
for bucket in $BUCKETS; do
  mc mb --ignore-existing "fourm/$bucket"
  resources="$resources\"arn:aws:s3:::$bucket\",\"arn:aws:s3:::$bucket/*\","
done

printf '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":[%s]}]}\n' \
  "${resources%,}" > /tmp/fourm-buckets-rw.json
mc admin policy create fourm fourm-buckets-rw /tmp/fourm-buckets-rw.json
mc admin user add fourm "$FOURM_S3_ACCESS_KEY" "$FOURM_S3_SECRET_KEY"
# (plain sh, no grep: the mc image is minimal)
case "$(mc admin user info fourm "$FOURM_S3_ACCESS_KEY")" in
  *fourm-buckets-rw*) echo "policy fourm-buckets-rw already attached to the fourm S3 user" ;;
  *) mc admin policy attach fourm fourm-buckets-rw --user "$FOURM_S3_ACCESS_KEY" ;;
esac
echo "buckets ready: $BUCKETS"

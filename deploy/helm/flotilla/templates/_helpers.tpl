{{/* Names and labels. */}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flotilla.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", within the 63 characters of a DNS label. Call with (list $ "suffix"). */}}
{{- define "flotilla.part" -}}
{{- printf "%s-%s" (include "flotilla.fullname" (index . 0)) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flotilla.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "flotilla.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "flotilla.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Prometheus scrape annotations for a pod. */}}
{{- define "flotilla.scrapeAnnotations" -}}
{{- if .Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.metrics | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The three listeners, as container ports and as flags. */}}
{{- define "flotilla.containerPorts" -}}
- {name: http, containerPort: {{ .Values.ports.http }}, protocol: TCP}
- {name: grpc, containerPort: {{ .Values.ports.grpc }}, protocol: TCP}
- {name: metrics, containerPort: {{ .Values.ports.metrics }}, protocol: TCP}
{{- end }}

{{- define "flotilla.listenArgs" -}}
- --http-port={{ .Values.ports.http }}
- --grpc-port={{ .Values.ports.grpc }}
- --metrics-port={{ .Values.ports.metrics }}
- --log-format={{ .Values.log.format }}
- --log-level={{ .Values.log.level }}
{{- end }}

{{/* Where workers reach the routers: the headless join Service, which lists routers before they are ready. */}}
{{- define "flotilla.routerJoinURL" -}}
{{- printf "http://%s.%s.svc.%s:%v" (include "flotilla.part" (list . "router-join")) .Release.Namespace .Values.clusterDomain .Values.ports.http }}
{{- end }}

{{/*
One pool's settings: worker defaults, each replaced by the pool's key of the same name. Call with
(list $ $pool); returns YAML (fromYaml it).
*/}}
{{- define "flotilla.pool" -}}
{{- $root := index . 0 }}
{{- $p := deepCopy $root.Values.worker }}
{{- range $k, $v := index . 1 }}
{{- $_ := set $p $k $v }}
{{- end }}
{{- toYaml $p }}
{{- end }}

{{/* "true" when a pool reads its capacity class or hardware kind from its node. Call with the pool's settings. */}}
{{- define "flotilla.needsNode" -}}
{{- if or (eq .capacityClass "fromNode") (not .hardware) }}true{{ end }}
{{- end }}

{{/* "true" when any pool reads its node. */}}
{{- define "flotilla.anyNeedsNode" -}}
{{- range $pool := .Values.pools }}
{{- include "flotilla.needsNode" (include "flotilla.pool" (list $ $pool) | fromYaml) }}
{{- end }}
{{- end }}

{{- define "flotilla.nodeReader" -}}
{{- if .Values.nodeInfo.rbac.create }}
{{- include "flotilla.part" (list . "node-reader") }}
{{- else }}
{{- required "nodeInfo.serviceAccountName: with nodeInfo.rbac.create false, name a ServiceAccount allowed to get nodes (or give every pool a fixed capacityClass and hardware)" .Values.nodeInfo.serviceAccountName }}
{{- end }}
{{- end }}

{{/* Seconds the preStop hook lets a worker drain: the grace period less the margin for SIGTERM and exit. */}}
{{- define "flotilla.drainSeconds" -}}
{{- $s := sub (int .terminationGracePeriodSeconds) (int .drainMarginSeconds) }}
{{- if or (lt $s 1) (lt (int .drainMarginSeconds) 2) }}
{{- fail (printf "pool %s: terminationGracePeriodSeconds (%v) must exceed drainMarginSeconds (%v), which must be at least 2" .name .terminationGracePeriodSeconds .drainMarginSeconds) }}
{{- end }}
{{- $s }}
{{- end }}

{{/*
The initContainer's script: reads the node's labels and writes capacity-class and hardware into
$NODE_INFO_DIR. kubectl prints the label map as compact JSON; label keys and values hold no quotes,
commas or colons, so tr turns it into k=v lines.
*/}}
{{- define "flotilla.nodeInfoScript" -}}
set -eu
labels="$(kubectl get node "$NODE_NAME" -o jsonpath='{.metadata.labels}')"
printf '%s\n' "$labels" | tr -d '{}"' | tr ',:' '\n=' > "$NODE_INFO_DIR/labels"
label() {
  while IFS= read -r kv; do
    if [ "${kv%%=*}" = "$1" ]; then printf '%s' "${kv#*=}"; return 0; fi
  done < "$NODE_INFO_DIR/labels"
  return 1
}
class=guaranteed
{{- range $key, $value := .Values.nodeInfo.opportunisticLabels }}
if [ "$(label {{ $key | squote }} || true)" = {{ $value | toString | squote }} ]; then class=opportunistic; fi
{{- end }}
hardware=
for key in {{ range .Values.nodeInfo.hardwareLabels }}{{ . | squote }} {{ end }}; do
  hardware="$(label "$key" || true)"
  if [ -n "$hardware" ]; then break; fi
done
printf '%s' "$class" > "$NODE_INFO_DIR/capacity-class"
printf '%s' "$hardware" > "$NODE_INFO_DIR/hardware"
echo "node $NODE_NAME: capacity class $class, hardware ${hardware:-(no label: the worker's default)}"
{{- end }}

{{/*
The worker's preStop hook: a preemption notice with the pool's drain deadline, then wait until the
worker reports drained (GET /v2/admin/worker) or the deadline passes. curl or wget, whichever the
image has; stops waiting at the deadline. Call with (list $ $pool-settings).
*/}}
{{- define "flotilla.preStopScript" -}}
{{- $root := index . 0 }}
{{- $drain := include "flotilla.drainSeconds" (index . 1) | int -}}
url=http://127.0.0.1:{{ $root.Values.ports.http }}
body='{"deadline_ms": {{ mul $drain 1000 }}}'
if command -v curl >/dev/null 2>&1; then
  post() { curl -fsS -m 2 -X POST -H 'Content-Type: application/json' -d "$body" "$url$1"; }
  get() { curl -fsS -m 2 "$url$1"; }
else
  post() { wget -q -T 2 -O - --header 'Content-Type: application/json' --post-data "$body" "$url$1"; }
  get() { wget -q -T 2 -O - "$url$1"; }
fi
post /v2/admin/preempt || true
end=$(($(date +%s) + {{ $drain }}))
while [ "$(date +%s)" -lt "$end" ]; do
  case "$(get /v2/admin/worker 2>/dev/null)" in *'"state":"drained"'*) exit 0 ;; esac
  sleep 1
done
{{- end }}

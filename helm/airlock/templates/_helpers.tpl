{{/*
The chart name, or nameOverride.
*/}}
{{- define "airlock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name objects are prefixed with: RELEASE-NAME, or RELEASE if it already holds NAME.
Cut at 63 characters, the DNS label limit some object names have.
*/}}
{{- define "airlock.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "airlock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "airlock.labels" -}}
helm.sh/chart: {{ include "airlock.chart" . }}
{{ include "airlock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: airlock
{{- end }}

{{/*
Labels that select the pod; they never change across upgrades.
*/}}
{{- define "airlock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "airlock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the pod runs as.
*/}}
{{- define "airlock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "airlock.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest pins it when given.
Call with (list IMAGE DEFAULT-TAG).
*/}}
{{- define "airlock.imageRef" -}}
{{- $image := index . 0 }}
{{- $tag := default (index . 1) $image.tag }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (toString $tag) }}
{{- end }}
{{- end }}

{{/*
The Airlock image (sidecar and capture).
*/}}
{{- define "airlock.image" -}}
{{- include "airlock.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/*
The agent's image.
*/}}
{{- define "airlock.agentImage" -}}
{{- include "airlock.imageRef" (list .Values.agent.image "latest") }}
{{- end }}

{{/*
The ConfigMap holding the rule files.
*/}}
{{- define "airlock.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "airlock.fullname" .)) .Values.rules.existingConfigMap }}
{{- end }}

{{/*
The Secret holding the CA and the control token.
*/}}
{{- define "airlock.secretName" -}}
{{- default (include "airlock.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/*
The claim holding the log.
*/}}
{{- define "airlock.claimName" -}}
{{- default (printf "%s-data" (include "airlock.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/*
The agent name recorded on actions.
*/}}
{{- define "airlock.agentName" -}}
{{- default .Release.Name .Values.airlock.agentName }}
{{- end }}

{{/*
The forward proxy's URL, for the agent's proxy variables.
*/}}
{{- define "airlock.proxyURL" -}}
{{- printf "http://127.0.0.1:%d" (int .Values.airlock.ports.proxy) }}
{{- end }}

{{/*
Where the containers see the chart's files.
*/}}
{{- define "airlock.rulesDir" -}}/etc/airlock/rules{{- end }}
{{- define "airlock.secretDir" -}}/etc/airlock/secret{{- end }}
{{- define "airlock.caDir" -}}/etc/airlock/ca{{- end }}
{{- define "airlock.dataDir" -}}/data{{- end }}

{{/*
An exec probe against the control API's /healthz. The API is bound to loopback, where the
kubelet's httpGet probes (sent to the pod IP) cannot reach it; the image has Python. The
opener ignores any proxy variables, so the probe always asks Airlock directly.
*/}}
{{- define "airlock.healthzProbe" -}}
{{- $root := index . 0 }}
{{- $probe := index . 1 -}}
exec:
  command:
    - python
    - -c
    - "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:{{ int $root.Values.airlock.ports.control }}/healthz', timeout={{ max 1 (sub (int $probe.timeoutSeconds) 1) }})"
periodSeconds: {{ int $probe.periodSeconds }}
timeoutSeconds: {{ int $probe.timeoutSeconds }}
failureThreshold: {{ int $probe.failureThreshold }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express; each failure says what to change.
*/}}
{{- define "airlock.validate" -}}
{{- if eq (int .Values.agent.uid) (int .Values.airlock.uid) }}
{{- fail (printf "agent.uid and airlock.uid are both %d: they must differ, because the capture init container redirects every connection of agent.uid to Airlock, which would then loop on its own upstream connections" (int .Values.agent.uid)) }}
{{- end }}
{{- $ports := .Values.airlock.ports }}
{{- if or (eq (int $ports.proxy) (int $ports.control)) (eq (int $ports.proxy) (int $ports.transparent)) (eq (int $ports.control) (int $ports.transparent)) }}
{{- fail (printf "airlock.ports must be three different ports (proxy %d, control %d, transparent %d)" (int $ports.proxy) (int $ports.control) (int $ports.transparent)) }}
{{- end }}
{{- if and .Values.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail (printf "replicaCount is %d but persistence is enabled: one log volume belongs to one pod; install one release per agent, or set persistence.enabled=false for logs that live and die with each pod" (int .Values.replicaCount)) }}
{{- end }}
{{- if and (not .Values.rules.existingConfigMap) (not .Values.rules.files) }}
{{- fail "rules.files is empty and rules.existingConfigMap is not set: give Airlock at least one rule file" }}
{{- end }}
{{- $reserved := concat (include "airlock.proxyVars" . | splitList " ") (include "airlock.caVars" . | splitList " ") (list "NO_PROXY" "no_proxy") }}
{{- range .Values.agent.env }}
{{- if has .name $reserved }}
{{- fail (printf "agent.env sets %s: remove it; the chart sets the proxy and CA trust variables itself, and NO_PROXY stays unset so that every request goes to the proxy" .name) }}
{{- end }}
{{- end }}
{{- $secret := include "airlock.secretName" . }}
{{- range .Values.agent.volumeMounts }}
{{- if has .name (list "data" "airlock-secret" "airlock-tmp" "capture-run") }}
{{- fail (printf "agent.volumeMounts mounts the chart's volume %q, which is Airlock's alone (its log, CA key, token or scratch space): mount a volume of your own from `volumes`" .name) }}
{{- end }}
{{- end }}
{{- range .Values.agent.envFrom }}
{{- if and .secretRef (eq (toString .secretRef.name) $secret) }}
{{- fail (printf "agent.envFrom reads Secret %s, which holds Airlock's CA key and control token: the agent must not see them" $secret) }}
{{- end }}
{{- end }}
{{- range .Values.agent.env }}
{{- if and .valueFrom .valueFrom.secretKeyRef (eq (toString .valueFrom.secretKeyRef.name) $secret) }}
{{- fail (printf "agent.env %s reads Secret %s, which holds Airlock's CA key and control token: the agent must not see them" .name $secret) }}
{{- end }}
{{- end }}
{{- range .Values.airlock.extraArgs }}
{{- if regexMatch "^--(data|listen|control|transparent|rules|ca|control-token)(=.*)?$" . }}
{{- fail (printf "airlock.extraArgs has %s, which the chart sets itself: use airlock.ports, rules and secret instead" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The variables that route the agent's requests through the proxy (proxy/environ.py PROXY_VARS).
*/}}
{{- define "airlock.proxyVars" -}}
HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy
{{- end }}

{{/*
The variables that make the agent's clients trust Airlock's CA (proxy/environ.py CA_VARS).
*/}}
{{- define "airlock.caVars" -}}
SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE NODE_EXTRA_CA_CERTS AWS_CA_BUNDLE GIT_SSL_CAINFO PIP_CERT HTTPLIB2_CA_CERTS GRPC_DEFAULT_SSL_ROOTS_FILE_PATH CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE NIX_SSL_CERT_FILE DENO_CERT
{{- end }}

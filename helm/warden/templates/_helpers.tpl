{{/*
Names and labels. Every helper takes the warden chart's root context.
*/}}
{{- define "warden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "warden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "warden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "warden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "warden.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: warden
{{- end -}}

{{- define "warden.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "warden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "warden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "warden.policiesConfigMap" -}}
{{- default (printf "%s-policies" (include "warden.fullname" .)) .Values.policies.existingConfigMap -}}
{{- end -}}

{{- define "warden.bundledRedisHost" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Prometheus annotations for pods that run Warden.
*/}}
{{- define "warden.scrapeAnnotations" -}}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/*
WARDEN_* environment. The chart owns the ports, the policies path and the Redis URL.
*/}}
{{- define "warden.env" -}}
- name: WARDEN_PORT
  value: {{ .Values.port | quote }}
- name: WARDEN_METRICS_PORT
  value: {{ .Values.metricsPort | quote }}
- name: WARDEN_POLICIES_DIR
  value: /etc/warden/policies
{{- range $key, $value := .Values.settings }}
- name: {{ printf "WARDEN_%s" (upper $key) }}
  value: {{ toString $value | quote }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: WARDEN_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "warden.bundledRedisHost" .) | quote }}
{{- else if .Values.redis.existingSecret }}
- name: WARDEN_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.url }}
- name: WARDEN_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- range .Values.credentials.env }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "warden.volumeMounts" -}}
{{- /* A directory mount, never subPath: subPath mounts do not receive ConfigMap
       updates, and hot reload depends on them. */ -}}
- name: warden-policies
  mountPath: /etc/warden/policies
  readOnly: true
- name: warden-tmp
  mountPath: /tmp
{{- range $i, $f := .Values.credentials.files }}
- name: {{ printf "warden-secret-%d" $i }}
  mountPath: {{ $f.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "warden.volumes" -}}
- name: warden-policies
  configMap:
    name: {{ include "warden.policiesConfigMap" . }}
- name: warden-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- range $i, $f := .Values.credentials.files }}
- name: {{ printf "warden-secret-%d" $i }}
  secret:
    secretName: {{ $f.secretName }}
{{- end }}
{{- end -}}

{{/*
The Warden container. Call with (dict "root" $ "sidecar" bool).
*/}}
{{- define "warden.container" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
- name: warden
  image: {{ include "warden.image" $root | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if and .sidecar $v.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: warden-http
      containerPort: {{ $v.port }}
      protocol: TCP
    - name: warden-metrics
      containerPort: {{ $v.metricsPort }}
      protocol: TCP
  env:
    {{- include "warden.env" $root | nindent 4 }}
  {{- with $v.credentials.envFromSecrets }}
  envFrom:
    {{- range . }}
    - secretRef:
        name: {{ . }}
    {{- end }}
  {{- end }}
  volumeMounts:
    {{- include "warden.volumeMounts" $root | nindent 4 }}
  startupProbe:
    httpGet: {path: /healthz, port: warden-http}
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet: {path: /readyz, port: warden-http}
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet: {path: /healthz, port: warden-http}
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  {{- if and (not .sidecar) (gt (int $v.preStopSleepSeconds) 0) }}
  lifecycle:
    preStop:
      exec:
        command: ["python", "-c", "import time; time.sleep({{ $v.preStopSleepSeconds }})"]
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
{{- end -}}

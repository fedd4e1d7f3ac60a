{{/*
Sidecar mode: add Warden to your own agent workload.

In this chart (see example-agent.yaml), or in a chart of yours that lists warden as a
dependency (then pass `.Subcharts.warden` instead of `.`):

  spec:
    initContainers:               # native sidecar (sidecar.native: true, k8s >= 1.29)
      {{- include "warden.sidecar" . | nindent 6 }}
    containers:
      - name: my-agent
        env:
          {{- include "warden.agentEnv" . | nindent 10 }}
    volumes:
      {{- include "warden.sidecarVolumes" . | nindent 6 }}

With sidecar.native: false, put the `warden.sidecar` block under `containers` instead.
The pod needs runAsNonRoot-compatible settings (the image runs as uid 10001).
*/}}
{{- define "warden.sidecar" -}}
{{ include "warden.container" (dict "root" . "sidecar" true) }}
{{- end -}}

{{- define "warden.sidecarVolumes" -}}
{{ include "warden.volumes" . }}
{{- end -}}

{{/*
What the agent container needs: the openai SDK (and so AutoGen's OpenAI clients) read
OPENAI_BASE_URL, so an agent that does not set base_url itself goes through Warden.
*/}}
{{- define "warden.agentEnv" -}}
- name: OPENAI_BASE_URL
  value: {{ printf "http://127.0.0.1:%d/v1" (int .Values.port) | quote }}
{{- end -}}

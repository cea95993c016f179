{{/* The chart's name, or nameOverride. */}}
{{- define "tokengate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: fullnameOverride, or the release name with the chart's name. */}}
{{- define "tokengate.fullname" -}}
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

{{- define "tokengate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokengate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tokengate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tokengate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{/* Where admitted requests go: the app container (sidecar) or upstream.url (gateway). */}}
{{- define "tokengate.upstreamURL" -}}
{{- if eq .Values.mode "sidecar" -}}
http://127.0.0.1:{{ .Values.app.port }}
{{- else -}}
{{ .Values.upstream.url }}
{{- end -}}
{{- end }}

{{/* The admin key's Secret: the one given, the one the chart makes, or none. */}}
{{- define "tokengate.adminKeySecret" -}}
{{- if .Values.adminKey.existingSecret -}}
{{ .Values.adminKey.existingSecret }}
{{- else if .Values.adminKey.value -}}
{{ include "tokengate.fullname" . }}-admin-key
{{- end -}}
{{- end }}

{{/* The tokengate container, the same in both modes. */}}
{{- define "tokengate.container" -}}
- name: tokengate
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve", "-c", "/etc/tokengate/tokengate.toml"]
  env:
    - name: TOKENGATE_STORE__URL
      {{- if .Values.store.existingSecret }}
      valueFrom:
        secretKeyRef:
          name: {{ .Values.store.existingSecret }}
          key: {{ .Values.store.secretKey }}
      {{- else }}
      value: {{ .Values.store.url | quote }}
      {{- end }}
    {{- if include "tokengate.adminKeySecret" . }}
    - name: TOKENGATE_ADMIN__KEY_FILE
      value: /etc/tokengate/secrets/admin-key
    {{- end }}
    - name: RUST_LOG
      value: {{ .Values.logLevel | quote }}
    {{- with .Values.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.ports.proxy }}
    - name: admin
      containerPort: {{ .Values.ports.admin }}
  {{- with .Values.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tokengate
      mountPath: /etc/tokengate
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end }}

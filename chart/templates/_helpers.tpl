{{/* Chart name. */}}
{{- define "netmend.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-prefixed unless the release name already contains the chart name. */}}
{{- define "netmend.fullname" -}}
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

{{- define "netmend.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "netmend.selectorLabels" -}}
app.kubernetes.io/name: {{ include "netmend.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "netmend.labels" -}}
helm.sh/chart: {{ include "netmend.chart" . }}
{{ include "netmend.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "netmend.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "netmend.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "netmend.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The config file exactly as the agent reads it: `config`, and `kubernetes` as its section. */}}
{{- define "netmend.configYaml" -}}
# netmend configuration, rendered by Helm from the chart's `config` and `kubernetes` values.
# Edit it with `helm upgrade --set config....`: the agent reloads it live (the kubernetes section
# is read at start).
{{ toYaml (set (deepCopy .Values.config) "kubernetes" .Values.kubernetes) }}
{{- end }}

{{/* "true" when the agent may use the Kubernetes API (kubernetes.enabled is not false). */}}
{{- define "netmend.kubeEnabled" -}}
{{- if ne (toString .Values.kubernetes.enabled) "false" }}true{{- end }}
{{- end }}

{{/* Whether the pod mounts the service account token. */}}
{{- define "netmend.automountToken" -}}
{{- if or .Values.serviceAccount.automountServiceAccountToken (include "netmend.kubeEnabled" .) }}true{{- else }}false{{- end }}
{{- end }}

{{/* Whether a Service is needed. */}}
{{- define "netmend.serviceEnabled" -}}
{{- if or .Values.service.enabled .Values.serviceMonitor.enabled }}true{{- end }}
{{- end }}

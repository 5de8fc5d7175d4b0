{{- define "agent.name" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agent.labels" -}}
app.kubernetes.io/name: dicom-connector-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "agent.selector" -}}
app.kubernetes.io/name: dicom-connector-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

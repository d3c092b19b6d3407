{{- define "agentid.labels" -}}
app.kubernetes.io/name: agentid
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "agentid.selector" -}}
app.kubernetes.io/name: agentid
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

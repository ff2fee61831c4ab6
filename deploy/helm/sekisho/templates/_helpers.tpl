{{/* Labels on every object of the release. */}}
{{- define "sekisho.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: sekisho
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* The operator's objects: the common labels and its name. */}}
{{- define "sekisho.operatorLabels" -}}
{{ include "sekisho.labels" . }}
app.kubernetes.io/name: sekisho-operator
{{- end }}

{{/* What the operator's Service and Deployment select its pods by. */}}
{{- define "sekisho.selectorLabels" -}}
app.kubernetes.io/name: sekisho-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's image: the chart's appVersion unless image.tag says otherwise. */}}
{{- define "sekisho.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Names, labels and images shared by every template. */}}
{{- define "ks.name" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "ks.labels" -}}
app.kubernetes.io/part-of: kubesentiment
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator") */}}
{{- define "ks.selector" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{- define "ks.image" -}}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .name (default .ctx.Chart.AppVersion .ctx.Values.image.tag) -}}
{{- end -}}

{{- define "ks.jobsNamespace" -}}
{{- default .Release.Namespace .Values.facade.jobsNamespace -}}
{{- end -}}

{{/* The namespaces the facade serves jobs in, space-separated: the jobs namespace and
every facade.tenantNamespaces entry, each once. */}}
{{- define "ks.facadeNamespaces" -}}
{{- prepend .Values.facade.tenantNamespaces (include "ks.jobsNamespace" .) | uniq | join " " -}}
{{- end -}}

{{- define "ks.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "ks.name" .)) .Values.facade.apiKeys.existingSecret -}}
{{- end -}}

{{/* The pod-level settings every workload shares. */}}
{{- define "ks.podCommon" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
securityContext: {{- toYaml .ctx.Values.podSecurityContext | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget: (dict "ctx" $ "component" "operator" "values" .Values.operator) */}}
{{- define "ks.pdb" -}}
{{- if .values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "ks.name" .ctx }}-{{ .component }}
  namespace: {{ .ctx.Release.Namespace }}
  labels: {{- include "ks.labels" .ctx | nindent 4 }}
spec:
  minAvailable: {{ .values.pdb.minAvailable }}
  selector:
    matchLabels: {{- include "ks.selector" . | nindent 6 }}
{{- end }}
{{- end -}}

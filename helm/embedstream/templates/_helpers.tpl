{{/*
Expand the name of the chart.
*/}}
{{- define "embedstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 characters at most: some Kubernetes name fields are
limited to this by the DNS naming spec). If the release name contains the chart name it is used as
the full name.
*/}}
{{- define "embedstream.fullname" -}}
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
Chart name and version as used by the chart label.
*/}}
{{- define "embedstream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object of the release carries (no name/component: see embedstream.labels).
*/}}
{{- define "embedstream.commonLabels" -}}
helm.sh/chart: {{ include "embedstream.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: embedstream
{{- end }}

{{/*
Common labels of the worker's objects.
*/}}
{{- define "embedstream.labels" -}}
{{ include "embedstream.commonLabels" . }}
app.kubernetes.io/name: {{ include "embedstream.name" . }}
app.kubernetes.io/component: worker
{{- end }}

{{/*
Selector labels (immutable on a Deployment: never add to these).
*/}}
{{- define "embedstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embedstream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "embedstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "embedstream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image: repository@digest, or repository:tag (tag defaults to the appVersion).
*/}}
{{- define "embedstream.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Pod terminationGracePeriodSeconds: the worker's own shutdown grace plus a margin, so Kubernetes
never kills a worker that is still draining (finish batch, flush producer, commit offsets).
*/}}
{{- define "embedstream.terminationGracePeriodSeconds" -}}
{{- add (ceil .Values.worker.shutdownGraceSeconds) .Values.worker.terminationGraceMarginSeconds }}
{{- end }}

{{/*
Render-time checks of value combinations the schema cannot express. Included by the Deployment.
*/}}
{{- define "embedstream.validate" -}}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled (HPA) and keda.enabled (KEDA ScaledObject) are mutually exclusive: KEDA creates and owns its own HPA for the Deployment. Enable only one." }}
{{- end }}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source is pvc: set model.pvc.claimName to an existing PersistentVolumeClaim holding the model folder." }}
{{- end }}
{{- if and (eq .Values.model.source "imageVolume") (not .Values.model.imageVolume.reference) }}
{{- fail "model.source is imageVolume: set model.imageVolume.reference to the OCI image/artifact holding the model folder." }}
{{- end }}
{{- if and .Values.keda.triggerAuthentication.create .Values.keda.authenticationRef }}
{{- fail "keda.triggerAuthentication.create and keda.authenticationRef are mutually exclusive: create one, or reference an existing TriggerAuthentication." }}
{{- end }}
{{- if and .Values.keda.triggerAuthentication.create (not .Values.keda.triggerAuthentication.secretName) }}
{{- fail "keda.triggerAuthentication.create: set keda.triggerAuthentication.secretName (an existing Secret)." }}
{{- end }}
{{- end }}

{{/*
The worker's environment (shared by the Deployment and the topic-creation Job).
*/}}
{{- define "embedstream.kafkaEnv" -}}
- name: EMBED_KAFKA__BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: EMBED_KAFKA__GROUP_ID
  value: {{ .Values.kafka.groupId | quote }}
{{- range $prop, $value := .Values.kafka.config }}
- name: {{ printf "EMBED_KAFKA__CONFIG__%s" ($prop | replace "." "_" | replace "-" "_" | upper) }}
  value: {{ $value | toString | quote }}
{{- end }}
- name: EMBED_INPUT_TOPIC
  value: {{ .Values.topics.input | quote }}
- name: EMBED_OUTPUT_TOPIC
  value: {{ .Values.topics.output | quote }}
- name: EMBED_DLQ_TOPIC
  value: {{ .Values.topics.dlq | quote }}
{{- end }}

{{/*
envFrom: the Kafka and schema registry credentials Secrets and extraEnvFrom.
*/}}
{{- define "embedstream.envFrom" -}}
{{- if .Values.kafka.existingSecret }}
- secretRef:
    name: {{ .Values.kafka.existingSecret }}
{{- end }}
{{- if and .Values.schemaRegistry.url .Values.schemaRegistry.existingSecret }}
- secretRef:
    name: {{ .Values.schemaRegistry.existingSecret }}
{{- end }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Model path the worker loads (EMBED_MODEL__PATH), empty for source hub.
*/}}
{{- define "embedstream.modelPath" -}}
{{- if eq .Values.model.source "image" }}
{{- .Values.model.image.path }}
{{- else if or (eq .Values.model.source "pvc") (eq .Values.model.source "imageVolume") }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

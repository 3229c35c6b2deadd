{{/* At most 45 characters: the workers' StatefulSet adds "-worker", and a StatefulSet name over 52 characters
cannot make pods (their controller-revision-hash label would pass 63). */}}
{{- define "streamcart.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 45 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 45 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "streamcart.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "streamcart.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamcart.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "streamcart.fullname" .)) -}}
{{- end -}}

{{- define "streamcart.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* The STREAMCART_* settings every streamcart process reads (streamcart/settings.py). Whole numbers go through
int64: a values file's 1048576 arrives as a float and would render as "1.048576e+06", which the settings refuse. */}}
{{- define "streamcart.env" -}}
- name: STREAMCART_HOST
  value: 0.0.0.0
- name: STREAMCART_HOME
  value: /var/lib/streamcart
- name: STREAMCART_APP_ID
  value: {{ .Values.appId | quote }}
- name: STREAMCART_TOPIC_PREFIX
  value: {{ .Values.topicPrefix | quote }}
- name: STREAMCART_PARTITIONS
  value: {{ .Values.partitions | int64 | quote }}
- name: STREAMCART_WORKERS
  value: {{ .Values.workers.replicas | int64 | quote }}
- name: STREAMCART_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: STREAMCART_KAFKA_HOST
  value: {{ .Values.kafka.host | quote }}
- name: STREAMCART_KAFKA_PORT
  value: {{ .Values.kafka.port | int64 | quote }}
- name: STREAMCART_TOPIC_REPLICATION_FACTOR
  value: {{ .Values.kafka.replicationFactor | int64 | quote }}
- name: STREAMCART_REGISTRY_HOST
  value: {{ .Values.registry.host | quote }}
- name: STREAMCART_REGISTRY_PORT
  value: {{ .Values.registry.port | int64 | quote }}
- name: STREAMCART_CONNECT_HOST
  value: {{ .Values.connect.host | quote }}
- name: STREAMCART_CONNECT_PORT
  value: {{ .Values.connect.port | int64 | quote }}
- name: STREAMCART_POSTGRES_HOST
  value: {{ .Values.warehouse.host | quote }}
- name: STREAMCART_POSTGRES_PORT
  value: {{ .Values.warehouse.port | int64 | quote }}
- name: STREAMCART_POSTGRES_DB
  value: {{ .Values.warehouse.database | quote }}
- name: STREAMCART_POSTGRES_USER
  value: {{ .Values.warehouse.user | quote }}
{{- if and (not .Values.gateway.deploy) (not .Values.gateway.host) }}
{{- fail "gateway.host is required when gateway.deploy=false: the workers would call a gateway at 0.0.0.0 and decline every payment" }}
{{- end }}
- name: STREAMCART_GATEWAY_HOST
  value: {{ ternary (printf "%s-gateway" (include "streamcart.fullname" .)) .Values.gateway.host .Values.gateway.deploy | quote }}
- name: STREAMCART_GATEWAY_PORT
  value: {{ .Values.gateway.port | int64 | quote }}
- name: STREAMCART_GATEWAY_ATTEMPT_TIMEOUT_S
  value: {{ .Values.gateway.attemptTimeoutS | quote }}
- name: STREAMCART_GATEWAY_ATTEMPTS
  value: {{ .Values.gateway.attempts | int64 | quote }}
- name: STREAMCART_GATEWAY_SETTLE_FOR_S
  value: {{ .Values.gateway.settleForS | quote }}
- name: STREAMCART_API_PORT
  value: {{ .Values.workers.apiPort | int64 | quote }}
- name: STREAMCART_API_PORT_PER_WORKER
  value: "false"
{{- /* Worker i is pod <fullname>-worker-i behind the headless service: how every process names every worker. */}}
- name: STREAMCART_ADVERTISED_HOST
  value: {{ printf "%s-worker-{index}.%s-worker.%s.svc" (include "streamcart.fullname" .) (include "streamcart.fullname" .) .Release.Namespace | quote }}
- name: STREAMCART_PRODUCER_LINGER_MS
  value: {{ .Values.workers.producerLingerMs | int64 | quote }}
- name: STREAMCART_COMMIT_INTERVAL_S
  value: {{ .Values.workers.commitIntervalS | quote }}
{{- /* The fetch settings are passed only when set: unset, the code's defaults apply (0 ms is a value). */}}
{{- if not (kindIs "invalid" .Values.workers.consumerFetchMinBytes) }}
- name: STREAMCART_CONSUMER_FETCH_MIN_BYTES
  value: {{ .Values.workers.consumerFetchMinBytes | int64 | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.workers.consumerFetchMaxWaitMs) }}
- name: STREAMCART_CONSUMER_FETCH_MAX_WAIT_MS
  value: {{ .Values.workers.consumerFetchMaxWaitMs | int64 | quote }}
{{- end }}
- name: STREAMCART_SAGA_TIMEOUT_S
  value: {{ .Values.workers.sagaTimeoutS | quote }}
- name: STREAMCART_ORDER_RETENTION_S
  value: {{ .Values.workers.orderRetentionS | quote }}
- name: STREAMCART_STANDBY_REPLICAS
  value: {{ .Values.workers.standbyReplicas | int64 | quote }}
{{- end -}}

{{- /* The secrets, for what signs tokens or writes connector configs (the workers, the init Job) only. */}}
{{- define "streamcart.secretEnv" -}}
- name: STREAMCART_JWT_SECRET
  valueFrom:
    secretKeyRef: {name: {{ include "streamcart.secretName" . }}, key: jwt-secret}
- name: STREAMCART_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "streamcart.secretName" . }}, key: postgres-password}
{{- end -}}

{{- /* The `job` label the workers are scraped under (the PodMonitor's) and every alerting rule selects: one per
       release unless metrics.prometheusRule.job names the scrape config's. A number stays a string. */}}
{{- define "streamcart.metricsJob" -}}
{{- default "" .Values.metrics.prometheusRule.job | toString | default (printf "%s-workers" (include "streamcart.fullname" .)) -}}
{{- end -}}

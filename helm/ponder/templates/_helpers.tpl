{{/* Names and labels. */}}
{{- define "ponder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* KubeRay appends suffixes to the cluster name for its pods and services: stay well under 63 characters. */}}
{{- define "ponder.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ponder.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ponder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ponder.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ponder.labels" -}}
{{ include "ponder.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ponder.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/* The MLflow URL every Ponder process logs to. */}}
{{- define "ponder.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s-mlflow.%s.svc:%d" (include "ponder.fullname" .) .Release.Namespace (int .Values.mlflow.port) -}}
{{- else if .Values.tracking.uri -}}
{{- .Values.tracking.uri -}}
{{- else -}}
{{- fail "set tracking.uri to an MLflow server, or mlflow.enabled=true: a run logged inside the head pod is lost with it" -}}
{{- end -}}
{{- end -}}

{{/*
Pool sizes as Ponder overrides. A GPU pool's actors ask for no Ray CPU and its pods advertise none (see
ponder.rayStartParams), which keeps CPU-only actors off GPU pods.
*/}}
{{- define "ponder.poolOverrides" -}}
{{- $r := .Values.rollout -}}{{- $l := .Values.learner -}}{{- $w := .Values.reward -}}
{{- if and (gt (int $l.gpus) 0) (ne (mod (int $l.gpus) (int $l.actorsPerPod)) 0) -}}
{{- fail (printf "learner.gpus (%d) must be a multiple of learner.actorsPerPod (%d): one or more whole GPUs per rank" (int $l.gpus) (int $l.actorsPerPod)) -}}
{{- end -}}
{{- $out := list -}}
{{- range $name, $p := dict "rollout" $r "learner" $l -}}
{{- $count := mul $p.replicas $p.actorsPerPod -}}
{{- $key := ternary "num_ranks" "num_workers" (eq $name "learner") -}}
{{- $out = append $out (printf "%s.%s=%d" $name $key $count) -}}
{{- $out = append $out (printf "%s.num_gpus=%v" $name (divf (int $p.gpus) (int $p.actorsPerPod))) -}}
{{- $out = append $out (printf "%s.num_cpus=%d" $name (ternary 0 (int $p.cpusPerActor) (gt (int $p.gpus) 0))) -}}
{{- end -}}
{{- $out = append $out (printf "reward.num_workers=%d" (mul $w.replicas $w.actorsPerPod)) -}}
{{- $out = append $out (printf "reward.num_cpus=%d" (int $w.cpusPerActor)) -}}
{{- join " " $out -}}
{{- end -}}

{{/* What the chart adds to the config file: where state goes, how to join Ray, and the pool sizes. */}}
{{- define "ponder.overrides" -}}
{{- $args := list (printf "checkpoint.dir=%s" .Values.checkpoint.dir) -}}
{{- $args = append $args (printf "tracking.uri=%s" (include "ponder.trackingUri" .)) -}}
{{- $args = append $args "cluster.address=auto" -}}
{{- $args = append $args (include "ponder.poolOverrides" .) -}}
{{- join " " (concat $args .Values.job.extraArgs) -}}
{{- end -}}

{{/* The job's command line. `--resume auto` makes every retry continue from the latest complete checkpoint. */}}
{{- define "ponder.entrypoint" -}}
{{- printf "ponder train /etc/ponder/config.yaml %s --resume auto" (include "ponder.overrides" .) -}}
{{- end -}}

{{/*
The Ponder config file. Chart defaults first, the user's `config` over them: the experiment's artifacts belong to the
tracking server (an empty artifact_location lets it choose), not to a directory in the head pod.
*/}}
{{- define "ponder.configYaml" -}}
{{- $base := dict "tracking" (dict "artifact_location" "") -}}
{{- toYaml (mustMergeOverwrite $base (deepCopy .Values.config)) -}}
{{- end -}}

{{/* `ray start` flags of one group: num-cpus counts the Ray CPUs its actors reserve, 0 on GPU pools. */}}
{{- define "ponder.rayStartParams" -}}
{{- $p := .pool -}}
{{- $cpus := ternary 0 (mul $p.actorsPerPod $p.cpusPerActor) (gt (int (default 0 $p.gpus)) 0) -}}
{{- toYaml (mustMergeOverwrite (dict "num-cpus" (toString $cpus)) $p.rayStartParams) -}}
{{- end -}}

{{/* Credentials for the trusted pods (head, rollout, learner). Isolated reward pods run model-written code: none. */}}
{{- define "ponder.credentialEnv" -}}
{{- range $key := list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef: {name: {{ $.Values.s3.secretName }}, key: {{ $key }}}
{{- end }}
{{- range $key := list "AWS_ENDPOINT_URL" "AWS_DEFAULT_REGION" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef: {name: {{ $.Values.s3.secretName }}, key: {{ $key }}, optional: true}
{{- end }}
{{- if .Values.tracking.secretName }}
{{- range $key := list "MLFLOW_TRACKING_USERNAME" "MLFLOW_TRACKING_PASSWORD" }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef: {name: {{ $.Values.tracking.secretName }}, key: {{ $key }}}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A Ray pod template. Args: root (the chart context), group (head, rollout, learner, reward), pool (its values).
KubeRay writes the container's command (`ray start ...`) itself.
*/}}
{{- define "ponder.rayPodTemplate" -}}
{{- $root := .root -}}{{- $p := .pool -}}
{{- $sandbox := eq .group "reward" -}}
{{- $trusted := or (not $sandbox) (not $root.Values.reward.isolated) -}}
{{- $res := deepCopy (default dict $p.resources) -}}
{{- if gt (int (default 0 $p.gpus)) 0 -}}
{{- $_ := set $res "limits" (mustMergeOverwrite (default dict $res.limits) (dict "nvidia.com/gpu" (int $p.gpus))) -}}
{{- end -}}
metadata:
  labels:
    {{- include "ponder.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .group }}
spec:
  # Nothing in a Ray pod talks to the Kubernetes API (no autoscaler): no token to steal.
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $sandbox }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ $p.runAsUser }}
    runAsGroup: {{ $p.runAsUser }}
    seccompProfile:
      {{- toYaml $p.seccompProfile | nindent 6 }}
  {{- end }}
  containers:
    - name: ray-{{ .group }}
      image: {{ include "ponder.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- if eq .group "head" }}
      ports:
        - {containerPort: 6379, name: gcs}
        - {containerPort: 8265, name: dashboard}
        - {containerPort: 10001, name: client}
      {{- end }}
      {{- if $trusted }}
      env:
        {{- include "ponder.credentialEnv" $root | trim | nindent 8 }}
        {{- with $root.Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- if $sandbox }}
      securityContext:
        # bubblewrap builds its namespaces as an unprivileged user; it needs no capability and no escalation.
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
      {{- end }}
      resources:
        {{- toYaml $res | nindent 8 }}
      volumeMounts:
        - {name: ponder-config, mountPath: /etc/ponder, readOnly: true}
        # Ray's object store and vLLM/NCCL use /dev/shm; the container default (64 MiB) is far too small.
        - {name: dshm, mountPath: /dev/shm}
        {{- if $trusted }}
        {{- with $root.Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- end }}
  volumes:
    - name: ponder-config
      configMap: {name: {{ include "ponder.fullname" $root }}-config}
    - name: dshm
      emptyDir: {medium: Memory, sizeLimit: {{ $p.shmSize }}}
    {{- if $trusted }}
    {{- with $root.Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
  {{- with $p.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $p.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $p.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* The RayCluster spec, shared by the RayJob (mode: job) and the RayCluster (mode: cluster). */}}
{{- define "ponder.rayClusterSpec" -}}
{{- $root := . -}}
rayVersion: {{ .Values.rayVersion | quote }}
enableInTreeAutoscaling: false
headGroupSpec:
  rayStartParams:
    {{- toYaml (mustMergeOverwrite (dict "num-cpus" "0" "dashboard-host" "0.0.0.0") .Values.head.rayStartParams) | nindent 4 }}
  template:
    {{- include "ponder.rayPodTemplate" (dict "root" $root "group" "head" "pool" .Values.head) | nindent 4 }}
workerGroupSpecs:
{{- range $group := list "rollout" "learner" "reward" }}
{{- $p := index $root.Values $group }}
  # Fixed size: the pools are sized by the chart's overrides, so the autoscaler has nothing to decide.
  - groupName: {{ $group }}
    replicas: {{ $p.replicas }}
    minReplicas: {{ $p.replicas }}
    maxReplicas: {{ $p.replicas }}
    rayStartParams:
      {{- include "ponder.rayStartParams" (dict "pool" $p) | nindent 6 }}
    template:
      {{- include "ponder.rayPodTemplate" (dict "root" $root "group" $group "pool" $p) | nindent 6 }}
{{- end }}
{{- end -}}

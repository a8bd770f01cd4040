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
Pool sizes and placement as Ponder overrides. Every pool actor asks for one unit of its group's custom resource
(ponder_rollout, ponder_learner, ponder_reward), which only that group's pods advertise (see ponder.rayStartParams):
that pins each pool to its own pods. Ray CPUs are left to the critics (ponder.criticChecks): GPU and reward actors ask
for none, and only CPU-only rollout/learner pools reserve cpusPerActor each.
*/}}
{{- define "ponder.poolOverrides" -}}
{{- $r := .Values.rollout -}}{{- $l := .Values.learner -}}{{- $w := .Values.reward -}}
{{- if and (gt (int $l.gpus) 0) (ne (mod (int $l.gpus) (int $l.actorsPerPod)) 0) -}}
{{- fail (printf "learner.gpus (%d) must be a multiple of learner.actorsPerPod (%d): one or more whole GPUs per rank" (int $l.gpus) (int $l.actorsPerPod)) -}}
{{- end -}}
{{- if eq (toString (dig "rollout" "weight_sync" "auto" (default dict .Values.config))) "shm" -}}
{{- fail "config.rollout.weight_sync=shm cannot work here: rollout and learner actors run in separate pods, which share no /dev/shm; leave it unset (auto: Ray's object store on CPU, NCCL on GPUs) or set network" -}}
{{- end -}}
{{- $out := list -}}
{{- range $name, $p := dict "rollout" $r "learner" $l -}}
{{- $count := mul $p.replicas $p.actorsPerPod -}}
{{- $key := ternary "num_ranks" "num_workers" (eq $name "learner") -}}
{{- $out = append $out (printf "%s.%s=%d" $name $key $count) -}}
{{- $out = append $out (printf "%s.num_gpus=%v" $name (divf (int $p.gpus) (int $p.actorsPerPod))) -}}
{{- $out = append $out (printf "%s.num_cpus=%d" $name (ternary 0 (int $p.cpusPerActor) (gt (int $p.gpus) 0))) -}}
{{- $out = append $out (printf "%s.resources.ponder_%s=1" $name $name) -}}
{{- end -}}
{{- $out = append $out (printf "reward.num_workers=%d" (mul $w.replicas $w.actorsPerPod)) -}}
{{- $out = append $out "reward.num_cpus=0" -}}
{{- $out = append $out "reward.resources.ponder_reward=1" -}}
{{- join " " $out -}}
{{- end -}}

{{/*
Critics (reward.functions entries reward_model and judge) are actors whose options take only num_cpus and num_gpus (no
custom resource: src/ponder/rewards/critic.py), so Ray CPUs are their pool marker: only the critic group advertises any.
Refuse what would leave a critic unplaceable, or let it take a pool actor's place.
*/}}
{{- define "ponder.criticChecks" -}}
{{- $c := .Values.critic -}}
{{- $functions := dig "reward" "functions" list (default dict .Values.config) -}}
{{- $cpus := 0.0 -}}{{- $gpus := 0.0 -}}
{{- range $f := $functions -}}
{{- if and (kindIs "map" $f) (has (toString $f.name) (list "reward_model" "judge")) -}}
{{- $o := default dict $f.options -}}
{{- $fc := ternary (float64 (default 0 $o.num_cpus)) 1.0 (hasKey $o "num_cpus") -}}
{{- $fg := ternary (float64 (default 0 $o.num_gpus)) 0.0 (hasKey $o "num_gpus") -}}
{{- if eq (int $c.replicas) 0 -}}
{{- fail (printf "reward.functions has a %s critic: set critic.replicas > 0, its pods are the only place a critic can go" $f.name) -}}
{{- end -}}
{{- if or (eq (int $.Values.rollout.gpus) 0) (eq (int $.Values.learner.gpus) 0) -}}
{{- fail (printf "the %s critic needs GPU rollout and learner pools: CPU-only pools advertise Ray CPUs, and a critic could take one that their actors need" $f.name) -}}
{{- end -}}
{{- if le $fc 0.0 -}}
{{- fail (printf "the %s critic's options.num_cpus must be > 0: a critic without Ray CPUs could be placed on any pod" $f.name) -}}
{{- end -}}
{{- if or (gt $fc (float64 $c.cpus)) (gt $fg (float64 $c.gpus)) -}}
{{- fail (printf "the %s critic (num_cpus %v, num_gpus %v) does not fit a critic pod (critic.cpus %v, critic.gpus %v)" $f.name $fc $fg $c.cpus $c.gpus) -}}
{{- end -}}
{{- $cpus = addf $cpus $fc -}}{{- $gpus = addf $gpus $fg -}}
{{- end -}}
{{- end -}}
{{- if or (gt $cpus (mulf $c.replicas $c.cpus)) (gt $gpus (mulf $c.replicas $c.gpus)) -}}
{{- fail (printf "the critics ask for %v Ray CPUs and %v GPUs, more than the critic pods have (%v and %v)" $cpus $gpus (mulf $c.replicas $c.cpus) (mulf $c.replicas $c.gpus)) -}}
{{- end -}}
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
tracking server (an empty artifact_location lets it choose), not to a directory in the head pod. Checkpoints are on
(every > 0) with a Hugging Face export in each, so that the driver on the head takes the final model from the last
checkpoint in S3 (the learner runs on another pod); the schema keeps `config` from turning either off.
*/}}
{{- define "ponder.configYaml" -}}
{{- $base := dict "tracking" (dict "artifact_location" "") "checkpoint" (dict "every" 20 "export_hf" true) -}}
{{- toYaml (mustMergeOverwrite $base (deepCopy .Values.config)) -}}
{{- end -}}

{{/*
`ray start` flags of one worker group. A pool group advertises its custom resource, one unit per actor it hosts, as
the single-quoted compact JSON that KubeRay itself writes: the operator parses the value (quotes trimmed, then JSON) to
add accelerators, and a shell runs the command. Ray CPUs: none on GPU and reward groups (critics take Ray CPUs, see
ponder.criticChecks), what the actors reserve on CPU-only pools, `cpus` on the critic group.
*/}}
{{- define "ponder.rayStartParams" -}}
{{- $p := .pool -}}{{- $gpus := int (default 0 $p.gpus) -}}
{{- $params := dict -}}
{{- if eq .group "critic" -}}
{{- $_ := set $params "num-cpus" (toString $p.cpus) -}}
{{- else -}}
{{- $cpus := ternary 0 (mul $p.actorsPerPod (default 0 $p.cpusPerActor)) (or (gt $gpus 0) (eq .group "reward")) -}}
{{- $_ := set $params "num-cpus" (toString $cpus) -}}
{{- $_ := set $params "resources" (printf "'%s'" (toJson (dict (printf "ponder_%s" .group) (int $p.actorsPerPod)))) -}}
{{- end -}}
{{- if gt $gpus 0 -}}
{{- $_ := set $params "num-gpus" (toString $gpus) -}}
{{- end -}}
{{- include "ponder.startParams" (dict "params" $params "given" $p.rayStartParams "shmSize" $p.shmSize "group" .group) -}}
{{- end -}}

{{/*
S3 and MLflow credentials, for the pods that use them: the head (the driver: MLflow, the final model, resume) and the
learner (checkpoints). Rollout and critic pods load models and receive weights, and isolated reward pods run
model-written code: none.
*/}}
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
{{- $env := "" -}}
{{- if or (has .group (list "head" "learner")) (and $sandbox $trusted) -}}
{{- $env = include "ponder.credentialEnv" $root | trim -}}
{{- end -}}
{{- with $root.Values.extraEnv -}}
{{- $env = printf "%s\n%s" $env (toYaml .) | trim -}}
{{- end -}}
{{- $image := deepCopy $root.Values.image -}}
{{- with (default dict $p.image) -}}
{{- if .repository }}{{ $_ := set $image "repository" .repository }}{{ end -}}
{{- if .tag }}{{ $_ := set $image "tag" .tag }}{{ end -}}
{{- end -}}
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
  {{- if $p.userNamespaces }}
  # The pod's own user namespace: its uids are not the node's, and /proc can be left unmasked (procMount below).
  hostUsers: false
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ $p.runAsUser }}
    runAsGroup: {{ $p.runAsUser }}
    seccompProfile:
      {{- toYaml $p.seccompProfile | nindent 6 }}
    {{- with $p.appArmorProfile }}
    appArmorProfile:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  {{- end }}
  containers:
    - name: ray-{{ .group }}
      image: {{ printf "%s:%s" $image.repository $image.tag }}
      imagePullPolicy: {{ $image.pullPolicy }}
      {{- if eq .group "head" }}
      ports:
        - {containerPort: 6379, name: gcs}
        - {containerPort: 8265, name: dashboard}
        - {containerPort: 10001, name: client}
      {{- end }}
      {{- if and $trusted $env }}
      env:
        {{- $env | nindent 8 }}
      {{- end }}
      {{- if $sandbox }}
      securityContext:
        # bubblewrap builds its namespaces as an unprivileged user; it needs no capability and no escalation.
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
        {{- if $p.userNamespaces }}
        procMount: Unmasked
        {{- end }}
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

{{/*
Ray's object store lives in /dev/shm; one larger than the pod's /dev/shm makes Ray fall back to disk (/tmp) with only a
warning, and Ray sizes it from the pod's memory, not from /dev/shm. So the chart sizes it from `shmSize`: 3/5 of it,
the rest for vLLM's and NCCL's buffers and the weight files a CPU engine reloads from. Bytes, as a string.
*/}}
{{- define "ponder.objectStoreMemory" -}}
{{- $number := regexFind "^[0-9]+" . -}}
{{- $unit := ternary 1073741824 1048576 (hasSuffix "Gi" .) -}}
{{- div (mul (int64 $number) $unit 3) 5 -}}
{{- end -}}

{{/*
The ports a Ray pod serves other Ray pods on, fixed (Ray picks the managers' ports at random otherwise) so that the
reward pods' NetworkPolicy can allow exactly these: the GCS (head), the object and node managers, the workers'.
*/}}
{{- define "ponder.rayPorts" -}}
{{- toJson (dict "gcs" 6379 "object-manager-port" 8076 "node-manager-port" 8077 "min-worker-port" 10002 "max-worker-port" 19999) -}}
{{- end -}}

{{/* The token Secret's name, when Ray token authentication is on. */}}
{{- define "ponder.rayAuthSecret" -}}
{{- .Values.rayAuth.secretName | default (printf "%s-ray-token" (include "ponder.fullname" .)) -}}
{{- end -}}

{{/*
A group's rayStartParams: its fixed ports, and its object store sized from its shmSize (one set by hand must fit in
it).
*/}}
{{- define "ponder.startParams" -}}
{{- $params := .params -}}{{- $shm := .shmSize -}}
{{- range $key, $port := fromJson (include "ponder.rayPorts" .) -}}
{{- if ne $key "gcs" -}}{{- $_ := set $params $key (toString (int $port)) -}}{{- end -}}
{{- end -}}
{{- $sized := include "ponder.objectStoreMemory" $shm -}}
{{- $given := get (default dict .given) "object-store-memory" -}}
{{- if and $given (gt (int64 $given) (div (mul (int64 $sized) 5) 3)) -}}
{{- fail (printf "%s.rayStartParams.object-store-memory (%s bytes) does not fit in %s.shmSize (%s): Ray would put the object store on disk; raise shmSize or lower it" .group $given .group $shm) -}}
{{- end -}}
{{- $_ := set $params "object-store-memory" $sized -}}
{{- toYaml (mustMergeOverwrite $params (default dict .given)) -}}
{{- end -}}

{{/* The RayCluster spec, shared by the RayJob (mode: job) and the RayCluster (mode: cluster). */}}
{{- define "ponder.rayClusterSpec" -}}
{{- $root := . -}}
{{- include "ponder.criticChecks" . -}}
rayVersion: {{ .Values.rayVersion | quote }}
{{- if .Values.rayAuth.enabled }}
{{- if not (semverCompare ">=2.52.0" .Values.rayVersion) }}
{{- fail (printf "rayAuth.enabled needs Ray >= 2.52 (rayVersion is %s): upgrade the image's Ray, or set rayAuth.enabled=false" .Values.rayVersion) }}
{{- end }}
# Every Ray request must carry the token; KubeRay gives each Ray container RAY_AUTH_MODE=token and the token.
authOptions:
  mode: token
  secretName: {{ include "ponder.rayAuthSecret" . }}
{{- end }}
enableInTreeAutoscaling: false
headGroupSpec:
  rayStartParams:
    {{- include "ponder.startParams" (dict "params" (dict "num-cpus" "0" "dashboard-host" "0.0.0.0") "given" .Values.head.rayStartParams "shmSize" .Values.head.shmSize "group" "head") | nindent 4 }}
  template:
    {{- include "ponder.rayPodTemplate" (dict "root" $root "group" "head" "pool" .Values.head) | nindent 4 }}
workerGroupSpecs:
{{- range $group := list "rollout" "learner" "reward" "critic" }}
{{- $p := index $root.Values $group }}
{{- if gt (int $p.replicas) 0 }}
  # Fixed size: the pools are sized by the chart's overrides, so the autoscaler has nothing to decide.
  - groupName: {{ $group }}
    replicas: {{ $p.replicas }}
    minReplicas: {{ $p.replicas }}
    maxReplicas: {{ $p.replicas }}
    rayStartParams:
      {{- include "ponder.rayStartParams" (dict "pool" $p "group" $group) | nindent 6 }}
    template:
      {{- include "ponder.rayPodTemplate" (dict "root" $root "group" $group "pool" $p) | nindent 6 }}
{{- end }}
{{- end }}
{{- end -}}

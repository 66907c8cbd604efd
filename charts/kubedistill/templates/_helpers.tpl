{{/*
The chart's name, truncated to 63 characters (the DNS label limit on Kubernetes names).
*/}}
{{- define "kubedistill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: `<release>-<chart>`, or the release name alone when it
already contains the chart's name; truncated to 63 characters.
*/}}
{{- define "kubedistill.fullname" -}}
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
`<chart>-<version>` for the helm.sh/chart label.
*/}}
{{- define "kubedistill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object the chart renders.
*/}}
{{- define "kubedistill.labels" -}}
helm.sh/chart: {{ include "kubedistill.chart" . }}
{{ include "kubedistill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubedistill
{{- end }}

{{/*
Labels that select the operator's pods. The component label keeps them apart from the routers
the operator creates (those carry app.kubernetes.io/component=router).
*/}}
{{- define "kubedistill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubedistill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "kubedistill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubedistill.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
`<fullname>-<suffix>`, the full name shortened so that the whole stays within 63 characters.
Call with (dict "suffix" "metrics" "context" $).
*/}}
{{- define "kubedistill.suffixedName" -}}
{{- $room := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" (include "kubedistill.fullname" .context | trunc $room | trimSuffix "-") .suffix }}
{{- end }}

{{/*
The kopf peering object's name.
*/}}
{{- define "kubedistill.peeringName" -}}
{{- default (include "kubedistill.fullname" .) .Values.peering.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins, an empty tag means appVersion.
Call with (dict "image" .Values.image "context" $).
*/}}
{{- define "kubedistill.image" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .context.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's RBAC rules on namespaced resources: one list, bound cluster-wide through a
ClusterRole or per watched namespace through Roles. Explicit verbs and resources only; each
`…/status` subresource is its own rule.
*/}}
{{- define "kubedistill.namespacedRules" -}}
# The two resources it reconciles: watched, and patched for kopf's finalizer and annotations.
- apiGroups: ["kubedistill.io"]
  resources: ["distillationjobs", "studentdeployments"]
  verbs: ["get", "list", "watch", "patch"]
# A job's status (phase, conditions, results). Holding patch also lets the operator grant exactly that
# to each job's pipeline ServiceAccount: RBAC forbids granting more than one holds.
- apiGroups: ["kubedistill.io"]
  resources: ["distillationjobs/status"]
  verbs: ["patch"]
# A StudentDeployment's status.
- apiGroups: ["kubedistill.io"]
  resources: ["studentdeployments/status"]
  verbs: ["patch"]
# A DistillationJob runs as a KubeRay RayJob, one per spec generation; a new generation deletes the old run.
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Children written with server-side apply: a PATCH, which needs create as well when the object is new.
# The resolved job spec and the router configuration; the StudentDeployment's Service; each job's
# pipeline ServiceAccount, its Role (patch on that one job's status) and the RoleBinding.
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create", "patch"]
# Triton + router pods: applied, and followed for the StudentDeployment's status.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The router pods' IPs, whose /metrics the operator reads into a StudentDeployment's status.live.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# A StudentDeployment's autoscaler: applied, and deleted when autoscaling is switched off.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch", "delete"]
# Existence checks of what a spec names before anything uses it: Secrets (S3 credentials, API keys), the
# PersistentVolumeClaims of pvc:// URIs and a job's spec.ray.serviceAccountName.
- apiGroups: [""]
  resources: ["secrets", "persistentvolumeclaims", "serviceaccounts"]
  verbs: ["get"]
# Events on the resources it reconciles.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
# kopf peering in the watched namespaces: replicas announce themselves in the object's status.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
Rules on cluster-scoped resources.
*/}}
{{- define "kubedistill.clusterRules" -}}
# kopf watches CRDs to notice its resources being (re)installed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# kopf limited to some namespaces follows their deletion and re-creation.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- else if .Values.peering.enabled }}
# kopf peering across the cluster.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}

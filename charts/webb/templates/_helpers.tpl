{{/* Names: every resource is "<fullname>-<component>", as Cilium's hubble-* resources. */}}

{{- define "webb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "webb.fullname" -}}
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

{{/* "<fullname>-<component>"; call with (list $ "agent"). Component names are short,
so the prefix is cut to leave room for them within 63 characters. */}}
{{- define "webb.componentName" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- printf "%s-%s" (include "webb.fullname" $root | trunc (int (sub 62 (len $component))) | trimSuffix "-") $component }}
{{- end }}

{{- define "webb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component; call with (list $ "agent"). */}}
{{- define "webb.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "webb.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component's resources; call with (list $ "agent"). */}}
{{- define "webb.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "webb.chart" $root }}
{{ include "webb.selectorLabels" . }}
app.kubernetes.io/part-of: webb
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- if $root.Chart.AppVersion }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
{{- end }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "repository:tag" of one component's image; call with (list $ .Values.agent.image). */}}
{{- define "webb.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{/* ServiceAccount name of one component; call with (list $ "agent"). */}}
{{- define "webb.serviceAccountName" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $sa := (index $root.Values $component).serviceAccount }}
{{- if $sa.create }}
{{- default (include "webb.componentName" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* Service port of the webb-peer Service: Hubble's 443 with TLS, 80 without. */}}
{{- define "webb.peerPort" -}}
{{- if .Values.peerService.port }}
{{- .Values.peerService.port }}
{{- else if .Values.tls.enabled }}
{{- 443 }}
{{- else }}
{{- 80 }}
{{- end }}
{{- end }}

{{/* The name the agents' certificate is valid for (a wildcard) and the one the relay checks. */}}
{{- define "webb.agentTLSDomain" -}}
{{- printf "%s.webb-grpc.local" .Values.clusterName }}
{{- end }}
{{- define "webb.agentTLSServerName" -}}
{{- printf "agent.%s" (include "webb.agentTLSDomain" .) }}
{{- end }}

{{/* Secret names holding tls.crt, tls.key and ca.crt; call with (list $ "agent"|"relayClient"|"relayServer"). */}}
{{- define "webb.tlsSecretName" -}}
{{- $root := index . 0 }}
{{- $which := index . 1 }}
{{- if eq $root.Values.tls.method "secret" }}
{{- $name := index $root.Values.tls.secrets $which }}
{{- if not $name }}
{{- fail (printf "tls.method is \"secret\": set tls.secrets.%s to the name of a Secret with tls.crt, tls.key and ca.crt" $which) }}
{{- end }}
{{- $name }}
{{- else }}
{{- include "webb.componentName" (list $root (printf "%s-certs" ($which | kebabcase))) }}
{{- end }}
{{- end }}

{{/* Address of the relay inside the cluster, for the ui and the metrics exporter. */}}
{{- define "webb.relayAddress" -}}
{{- printf "%s.%s.svc.%s:%v" (include "webb.componentName" (list . "relay")) .Release.Namespace .Values.clusterDomain .Values.relay.service.port }}
{{- end }}

{{/* Checks of value combinations that a schema cannot express. */}}
{{- define "webb.validate" -}}
{{- if and .Values.relay.tls.enabled .Values.metrics.enabled }}
{{- fail "relay.tls.enabled: webb-metrics has no TLS client yet, so it could not read from a TLS relay; set metrics.enabled=false or keep relay.tls.enabled=false" }}
{{- end }}
{{- if and .Values.relay.tls.enabled (not .Values.relay.enabled) }}
{{- fail "relay.tls.enabled needs relay.enabled" }}
{{- end }}
{{- if and (or .Values.ui.enabled .Values.metrics.enabled) (not .Values.relay.enabled) }}
{{- fail "ui and metrics read flows from the relay: set relay.enabled=true or disable them" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- end }}

{{/* The identity custom resource the agent allocates security identities with. */}}
{{- define "webb.identityGroup" -}}webb.io{{- end }}
{{- define "webb.identityResource" -}}webbidentities{{- end }}

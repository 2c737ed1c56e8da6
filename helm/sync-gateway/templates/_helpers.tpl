{{/* Names and labels. */}}
{{- define "sync-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sync-gateway.fullname" -}}
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

{{- define "sync-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sync-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sync-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sync-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sync-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sync-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the chart mounts things; the ConfigMap names these paths to the gateway. */}}
{{- define "sync-gateway.secretDir" -}}/var/run/secrets/sync-gateway{{- end }}
{{- define "sync-gateway.dataDir" -}}/data{{- end }}

{{/*
The client credentials configured, so a release with several is refused at install (the gateway
would refuse it at start anyway, with a message less easy to tie to a value).
*/}}
{{- define "sync-gateway.credentials" -}}
{{- $c := list }}
{{- if .Values.secrets.clientSecret.existingSecret }}{{ $c = append $c "secrets.clientSecret" }}{{ end }}
{{- if .Values.secrets.clientCertificate.existingSecret }}{{ $c = append $c "secrets.clientCertificate" }}{{ end }}
{{- if .Values.workloadIdentity.enabled }}{{ $c = append $c "workloadIdentity" }}{{ end }}
{{- join ", " $c }}
{{- end }}

{{/*
One TOML value. toJson writes strings, integers, booleans and arrays of them in a form that is
also valid TOML (JSON string escapes are TOML basic-string escapes); whole numbers from YAML stay
integers. A map becomes an inline table, e.g. limits.per_caller = { burst = 3, per_minute = 10 }.
*/}}
{{- define "sync-gateway.tomlValue" -}}
{{- if kindIs "map" . -}}
{ {{- $first := true }}{{ range $k, $v := . }}{{ if not $first }},{{ end }} {{ $k }} = {{ include "sync-gateway.tomlValue" $v }}{{ $first = false }}{{ end }} }
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end }}

{{/*
The keys of one TOML table, in the order given, skipping those absent, null, "" or [] (the
gateway's default applies, or its check-config names the missing key). Call with (dict "values" <map> "keys" (list ...)).
*/}}
{{- define "sync-gateway.tomlKeys" -}}
{{- $values := .values | default dict }}
{{- range $k := .keys }}
{{- $v := get $values $k }}
{{- $unset := or (kindIs "invalid" $v) (and (kindIs "string" $v) (eq $v "")) (and (kindIs "slice" $v) (eq (len $v) 0)) }}
{{- if not $unset }}
{{ $k }} = {{ include "sync-gateway.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

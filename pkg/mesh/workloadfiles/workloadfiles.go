// Package workloadfiles generates the files a VM needs to join the mesh:
// cluster.env, mesh.yaml, hosts, root-cert.pem and istio-token, as
// `istioctl x workload entry configure` writes them (see
// shared/istio-vm-contract.md §1), from inputs the caller read from the
// cluster. It differs on purpose in two places: it never writes an empty
// hosts file (an error names the missing address instead), and it quotes
// every cluster.env value the same way, which parses to the same values.
package workloadfiles

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"istio.io/api/annotation"
	"istio.io/api/label"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/pkg/agentspec"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// RootCertPath is where the VM keeps the mesh's root certificate, the trust
// anchor for istiod's certificate (pilot-agent rewrites it with the one istiod
// sends).
const RootCertPath = "/etc/certs/root-cert.pem"

// TokenOnly is what cluster.env holds beyond istioctl's: every certificate
// request made with the istio-token alone, as Istio's own VM tests set it
// (PROV_CERT empty). With PROV_CERT, pilot-agent presents its certificate,
// istiod's first authenticator takes it and a certificate renews itself for
// ever, so revoking the token would change nothing while the VM runs. The
// CA's root, which PROV_CERT located, is named instead.
func TokenOnly() map[string]string {
	return map[string]string{"PROV_CERT": "", "CA_ROOT_CA": RootCertPath}
}

// Group is the WorkloadGroup the VM belongs to.
type Group struct {
	Name, Namespace string
	// Annotations are the object's metadata annotations.
	Annotations map[string]string
	Spec        *networking.WorkloadGroup
}

// Options are the inputs of one generation.
type Options struct {
	// Mesh is the "mesh" key of the istio (or istio-<revision>) ConfigMap.
	Mesh  string
	Group Group
	// IstioNamespace defaults to istio-system.
	IstioNamespace string
	Revision       string
	ClusterID      string
	AutoRegister   bool
	// DNSCapture writes ISTIO_META_DNS_CAPTURE=true (istioctl's default).
	DNSCapture bool
	// InternalIP or ExternalIP (not both) become ISTIO_SVC_IP.
	InternalIP, ExternalIP string
	// IstiodIP is where the VM reaches istiod (the east-west gateway, or the
	// lab host); the hosts file maps istiod's name to it.
	IstiodIP string
	// RootCert is istio-ca-root-cert's root-cert.pem in the group's namespace;
	// Token is a TokenRequest token for the group's service account.
	RootCert, Token []byte
	// Proxyless runs pilot-agent without Envoy, for gRPC apps that take
	// their configuration over xDS (see Proxyless).
	Proxyless bool
	// VM names the VM: its proxy carries it as label VMLabel, which istiod
	// copies onto the WorkloadEntry it autoregisters for it, so the entry
	// names its VM wherever the VM's address goes.
	VM string
	// CertificateLifetime is this VM's workload certificate lifetime
	// (SECRET_TTL, over the group's); zero leaves the group's or Istio's.
	CertificateLifetime time.Duration
	// FollowAddress lets the VM's agent register the proxy at the VM's
	// own first address when ISTIO_SVC_IP is no longer one of its
	// addresses (agentspec.FollowAddressKey).
	FollowAddress bool
}

// VMLabel is the proxy label naming the VM, the one meshvm's other objects
// of a VM carry.
const VMLabel = ownership.VMLabel

// GRPCBootstrapPath is where pilot-agent writes the gRPC xDS bootstrap (its
// default, ./etc/istio/proxy/grpc-bootstrap.json, from the unit's working
// directory /): a proxyless app points GRPC_XDS_BOOTSTRAP at it.
const GRPCBootstrapPath = "/etc/istio/proxy/grpc-bootstrap.json"

// CertDir is where pilot-agent writes the workload certificate.
const CertDir = "/etc/certs"

// Proxyless is what cluster.env holds for a VM without Envoy, as Istio's
// grpc-agent injection template sets it for proxyless pods: no Envoy, the
// gRPC generator, no DNS capture (gRPC resolves xds:/// names itself), and
// no capture rules (they would send traffic to an Envoy that is not
// there). OUTPUT_CERTS is absolute because the gRPC bootstrap names the
// certificate files by it: a relative one only resolves from /.
func Proxyless() map[string]string {
	return map[string]string{"DISABLE_ENVOY": "true", "ISTIO_META_GENERATOR": "grpc", "OUTPUT_CERTS": CertDir,
		"GRPC_XDS_BOOTSTRAP": GRPCBootstrapPath}
}

// Files are the generated contents, by the names istioctl gives them.
type Files struct {
	ClusterEnv, Mesh, Hosts, RootCert, Token []byte
}

// Map returns the files by name (cluster.env, mesh.yaml, hosts, ...).
func (f Files) Map() map[string][]byte {
	return map[string][]byte{"cluster.env": f.ClusterEnv, "mesh.yaml": f.Mesh, "hosts": f.Hosts, "root-cert.pem": f.RootCert, "istio-token": f.Token}
}

// Revisioned reports whether rev names a non-default control plane ("" and
// "default" are the default revision).
func Revisioned(rev string) bool { return rev != "" && rev != "default" }

// RevisionName is how a revision is named: "default" for the default.
func RevisionName(rev string) string {
	if !Revisioned(rev) {
		return "default"
	}
	return rev
}

// IstiodService is the revision's istiod Deployment and Service name.
func IstiodService(rev string) string {
	if Revisioned(rev) {
		return "istiod-" + rev
	}
	return "istiod"
}

// MeshConfigName is the revision's mesh config ConfigMap (what istioctl
// reads the VM's mesh.yaml from).
func MeshConfigName(rev string) string {
	if Revisioned(rev) {
		return "istio-" + rev
	}
	return "istio"
}

// IstiodHost is istiod's service name as the VM resolves it.
func IstiodHost(ns, rev string) string { return IstiodService(rev) + "." + ns + ".svc" }

// Generate produces the files, or an error naming the missing input.
func Generate(o Options) (Files, error) {
	if o.IstioNamespace == "" {
		o.IstioNamespace = "istio-system"
	}
	if o.Group.Spec == nil || o.Group.Spec.GetTemplate() == nil {
		return Files{}, errors.New("the WorkloadGroup has no spec.template: set at least template.serviceAccount")
	}
	if o.InternalIP != "" && o.ExternalIP != "" {
		return Files{}, errors.New("set the VM's internal IP or its external IP, not both")
	}
	if len(o.RootCert) == 0 {
		return Files{}, fmt.Errorf("no root certificate: istiod has not yet created ConfigMap istio-ca-root-cert in namespace %s (is istiod running?)", o.Group.Namespace)
	}
	if len(o.Token) == 0 {
		return Files{}, errors.New("no istio-token: request one for the group's service account (audience istio-ca)")
	}
	pc, err := proxyConfig(o)
	if err != nil {
		return Files{}, err
	}
	mesh, err := meshYAML(pc)
	if err != nil {
		return Files{}, err
	}
	hosts, err := hostsFile(o)
	if err != nil {
		return Files{}, err
	}
	return Files{ClusterEnv: clusterEnv(o, pc), Mesh: mesh, Hosts: hosts, RootCert: o.RootCert, Token: o.Token}, nil
}

// proxyConfig is the mesh's defaultConfig with the group's proxy config
// annotations merged in and the VM's metadata forced, as istioctl does.
func proxyConfig(o Options) (*meshconfig.ProxyConfig, error) {
	mc := &meshconfig.MeshConfig{DefaultConfig: &meshconfig.ProxyConfig{ProxyMetadata: map[string]string{}}}
	if err := applyYAML(o.Mesh, mc); err != nil {
		return nil, fmt.Errorf("mesh config: %w", err)
	}
	if mc.DefaultConfig == nil {
		mc.DefaultConfig = &meshconfig.ProxyConfig{}
	}
	pc := mc.DefaultConfig
	if Revisioned(o.Revision) && pc.DiscoveryAddress == "" {
		pc.DiscoveryAddress = IstiodHost(o.IstioNamespace, o.Revision) + ":15012"
	}
	// Object annotations first, then the template's: the later wins.
	for _, ann := range []map[string]string{o.Group.Annotations, o.Group.Spec.GetMetadata().GetAnnotations()} {
		y, ok := ann[annotation.ProxyConfig.Name]
		if !ok {
			continue
		}
		over := &meshconfig.ProxyConfig{}
		if err := applyYAML(y, over); err != nil {
			return nil, fmt.Errorf("WorkloadGroup annotation %s: %w", annotation.ProxyConfig.Name, err)
		}
		proto.Merge(pc, over) // maps merge key by key, as istioctl's metadata merge does
	}
	if pc.ProxyMetadata == nil {
		pc.ProxyMetadata = map[string]string{}
	}

	tmpl := o.Group.Spec.GetTemplate()
	labels := map[string]string{}
	for k, v := range o.Group.Spec.GetMetadata().GetLabels() {
		labels[k] = v
	}
	for k, v := range tmpl.GetLabels() {
		labels[k] = v
	}
	pc.ReadinessProbe = o.Group.Spec.GetProbe()

	md := pc.ProxyMetadata
	md["CANONICAL_SERVICE"] = firstLabel(labels, o.Group.Name, label.ServiceCanonicalName.Name, "app.kubernetes.io/name", "app")
	md["CANONICAL_REVISION"] = firstLabel(labels, "latest", label.ServiceCanonicalRevision.Name, "app.kubernetes.io/version", "version")
	md["POD_NAMESPACE"] = o.Group.Namespace
	md["SERVICE_ACCOUNT"] = tmpl.GetServiceAccount()
	md["TRUST_DOMAIN"] = mc.GetTrustDomain()
	md["ISTIO_META_CLUSTER_ID"] = o.ClusterID
	md["ISTIO_META_MESH_ID"] = pc.GetMeshId()
	md["ISTIO_META_NETWORK"] = tmpl.GetNetwork()
	if ports := podPorts(tmpl.GetPorts()); ports != "" {
		md["ISTIO_META_POD_PORTS"] = ports
	}
	md["ISTIO_META_WORKLOAD_NAME"] = o.Group.Name
	// A name too long for a label value (over 63 characters) is left out:
	// istiod would refuse the entry, and the VM is then found by address.
	if o.VM != "" && len(validation.IsValidLabelValue(o.VM)) == 0 {
		labels[VMLabel] = o.VM
	}
	if o.CertificateLifetime > 0 {
		md["SECRET_TTL"] = o.CertificateLifetime.String()
	}
	labels[label.ServiceCanonicalName.Name] = md["CANONICAL_SERVICE"]
	labels[label.ServiceCanonicalRevision.Name] = md["CANONICAL_REVISION"]
	lj, err := json.Marshal(labels)
	if err != nil {
		return nil, err
	}
	md["ISTIO_METAJSON_LABELS"] = string(lj)
	if o.DNSCapture && !o.Proxyless {
		md["ISTIO_META_DNS_CAPTURE"] = "true"
	}
	if o.AutoRegister {
		md["ISTIO_META_AUTO_REGISTER_GROUP"] = o.Group.Name
	}
	return pc, nil
}

func firstLabel(labels map[string]string, def string, keys ...string) string {
	for _, k := range keys {
		if v, ok := labels[k]; ok {
			return v
		}
	}
	return def
}

// podPorts is ISTIO_META_POD_PORTS: the template's ports as container ports, by name.
func podPorts(ports map[string]uint32) string {
	type podPort struct {
		Name          string `json:"name,omitempty"`
		ContainerPort int    `json:"containerPort"`
		Protocol      string `json:"protocol"`
	}
	if len(ports) == 0 {
		return ""
	}
	out := make([]podPort, 0, len(ports))
	for name, p := range ports {
		out = append(out, podPort{Name: name, ContainerPort: int(p)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	b, _ := json.Marshal(out)
	return string(b)
}

// applyYAML merges YAML (proto JSON names or field names) into msg.
func applyYAML(y string, msg proto.Message) error {
	if strings.TrimSpace(y) == "" {
		return nil
	}
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		return err
	}
	over := msg.ProtoReflect().New().Interface()
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, over); err != nil {
		return err
	}
	proto.Merge(msg, over)
	return nil
}

func meshYAML(pc *meshconfig.ProxyConfig) ([]byte, error) {
	js, err := protojson.Marshal(pc)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	return yaml.Marshal(map[string]any{"defaultConfig": m})
}

// clusterEnv is the proxy metadata plus the VM's capture and identity settings.
func clusterEnv(o Options, pc *meshconfig.ProxyConfig) []byte {
	tmpl := o.Group.Spec.GetTemplate()
	inbound := "*"
	if len(tmpl.GetPorts()) > 0 {
		var ports []string
		for _, p := range tmpl.GetPorts() {
			ports = append(ports, strconv.Itoa(int(p)))
		}
		sort.Strings(ports) // istioctl leaves map order; sorted is stable
		inbound = strings.Join(ports, ",")
	}
	// 22 (ssh), 15090 (metrics), 15021 (readiness) and the agent's status port stay uncaptured.
	exclude := "22,15090,15021"
	if sp := pc.GetStatusPort(); sp != 15090 && sp != 15021 {
		if sp == 0 {
			sp = 15020
		}
		exclude += "," + strconv.Itoa(int(sp))
	}
	// A group without ports captures every inbound port: the agent's too,
	// which would cut hostctl off from the VM once the sidecar starts.
	if inbound == "*" {
		exclude += "," + strconv.Itoa(agentspec.Port)
	}
	env := map[string]string{}
	for k, v := range pc.GetProxyMetadata() {
		env[k] = v
	}
	env["ISTIO_INBOUND_PORTS"] = inbound
	env["ISTIO_NAMESPACE"] = o.Group.Namespace
	env["ISTIO_SERVICE"] = o.Group.Name + "." + o.Group.Namespace
	env["ISTIO_SERVICE_CIDR"] = "*"
	env["ISTIO_LOCAL_EXCLUDE_PORTS"] = exclude
	env["SERVICE_ACCOUNT"] = tmpl.GetServiceAccount()
	// A PROV_CERT set in the proxy metadata is left as the mesh wants it.
	if _, set := env["PROV_CERT"]; !set {
		for k, v := range TokenOnly() {
			env[k] = v
		}
	}
	if o.Proxyless {
		for k, v := range Proxyless() {
			env[k] = v
		}
	}
	if Revisioned(o.Revision) {
		env["CA_ADDR"] = IstiodHost(o.IstioNamespace, o.Revision) + ":15012"
	}
	if o.FollowAddress {
		env[agentspec.FollowAddressKey] = "true"
	}
	switch {
	case o.InternalIP != "":
		env["ISTIO_SVC_IP"] = o.InternalIP
	case o.ExternalIP != "":
		env["ISTIO_SVC_IP"] = o.ExternalIP
		env["REWRITE_PROBE_LEGACY_LOCALHOST_DESTINATION"] = "true"
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, shellQuote(env[k]))
	}
	return []byte(b.String())
}

// shellQuote single-quotes every value, so any value survives `set -a; .`.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// hostsFile maps istiod's name to the address the VM reaches it on.
func hostsFile(o Options) ([]byte, error) {
	ip, err := netip.ParseAddr(o.IstiodIP)
	if err != nil {
		return nil, fmt.Errorf("no address for %s (%q): the east-west gateway has no external address yet; pass the address istiod is reachable on", IstiodHost(o.IstioNamespace, o.Revision), o.IstiodIP)
	}
	return []byte(fmt.Sprintf("%s %s\n", ip, IstiodHost(o.IstioNamespace, o.Revision))), nil
}

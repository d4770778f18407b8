// Package istioinstall renders Istio from the charts embedded in the pinned
// istio.io/istio module, with its own install library (what `istioctl
// install` runs, without the istioctl binary), and applies the result with
// server-side apply. The render is the recipe's: mesh, cluster and network
// ids, VM autoregistration and health checks on, no default ingress gateway;
// then the east-west gateway, the Gateway and VirtualService exposing istiod
// (15012, 15017) and the cross-network Gateway (15443), and the network
// label on istio-system.
package istioinstall

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	networking "istio.io/api/networking/v1"
	clientnetworking "istio.io/client-go/pkg/apis/networking/v1"
	"istio.io/istio/operator/pkg/render"
	"istio.io/istio/operator/pkg/util/clog"

	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
)

const (
	// EmbeddedVersion is the Istio of the embedded charts: the pinned
	// istio.io/istio module is its 1.31 line (the module's VERSION file).
	EmbeddedVersion = "1.31.0"
	// DefaultHub is where the charts' images come from; the charts carry a
	// placeholder, so hub and tag are always set.
	DefaultHub = "docker.io/istio"
	// Namespace is where the control plane and the gateways live.
	Namespace = "istio-system"
	// EastWestGateway names the east-west gateway's Deployment and Service.
	EastWestGateway = "istio-eastwestgateway"
)

// Options are the install's inputs, from meshvm.yaml.
type Options struct {
	MeshID, ClusterName, Network string
	// Hub and Tag name the images; empty means DefaultHub and EmbeddedVersion.
	Hub, Tag string
	// Revision is the control plane's istio.io/rev; empty (or "default")
	// is the default revision.
	Revision string
	// OneNetwork renders a single-network mesh: VMs and pods share a
	// routable network and reach istiod directly, so there is no east-west
	// gateway and nothing exposed through it.
	OneNetwork bool
	// Istioctl renders with that istioctl (of version Tag, see FindIstioctl)
	// instead of the embedded charts.
	Istioctl string
}

// Object is one rendered Kubernetes object and the component it belongs to.
type Object struct {
	Component string
	*unstructured.Unstructured
}

// Ref names the object as kubectl would: Kind/namespace/name.
func (o Object) Ref() string {
	if o.GetNamespace() == "" {
		return o.GetKind() + "/" + o.GetName()
	}
	return o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
}

// ImageHub is where the install's images come from, the VMs' proxyv2
// among them: Hub, else DefaultHub.
func (o Options) ImageHub() string {
	if o.Hub == "" {
		return DefaultHub
	}
	return o.Hub
}

func (o Options) withDefaults() (Options, error) {
	o.Hub = o.ImageHub()
	if o.Tag == "" {
		o.Tag = EmbeddedVersion
	}
	if o.MeshID == "" || o.ClusterName == "" || o.Network == "" {
		return o, fmt.Errorf("istio install needs a mesh id, a cluster name and a network (istio.meshID, istio.clusterName, istio.network)")
	}
	return o, nil
}

// controlPlane is the recipe's IstioOperator: the default profile, ids set,
// VM autoregistration and health checks on, no default ingress gateway (it
// would hold the host ports the east-west gateway needs on k3s).
func controlPlane(o Options) map[string]any {
	return map[string]any{
		"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
		"metadata": map[string]any{"name": "meshvm-control-plane", "namespace": Namespace},
		"spec": map[string]any{
			"profile": "default", "hub": o.Hub, "tag": o.Tag, "revision": revisionValue(o.Revision),
			"values": map[string]any{
				"global": map[string]any{"meshID": o.MeshID, "network": o.Network,
					"multiCluster": map[string]any{"clusterName": o.ClusterName}},
				"pilot": map[string]any{"env": map[string]any{
					"PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION": "true",
					"PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS":     "true",
				}},
			},
			"components": map[string]any{"ingressGateways": []any{
				map[string]any{"name": "istio-ingressgateway", "enabled": false},
			}},
		},
	}
}

// eastWest is the east-west gateway as Istio's gen-eastwest-gateway.sh
// writes it for a network.
func eastWest(o Options) map[string]any {
	port := func(name string, p int) map[string]any {
		return map[string]any{"name": name, "port": p, "targetPort": p}
	}
	return map[string]any{
		"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
		"metadata": map[string]any{"name": "meshvm-eastwest", "namespace": Namespace},
		"spec": map[string]any{
			// The gateway's own proxy is served by the revision installed last.
			"profile": "empty", "hub": o.Hub, "tag": o.Tag, "revision": revisionValue(o.Revision),
			"components": map[string]any{"ingressGateways": []any{map[string]any{
				"name": EastWestGateway, "enabled": true,
				"label": map[string]any{"istio": "eastwestgateway", "app": EastWestGateway, "topology.istio.io/network": o.Network},
				"k8s": map[string]any{
					"env":     []any{map[string]any{"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": o.Network}},
					"service": map[string]any{"ports": []any{port("status-port", 15021), port("tls", 15443), port("tls-istiod", 15012), port("tls-webhook", 15017)}},
				},
			}}},
			"values": map[string]any{
				"gateways": map[string]any{"istio-ingressgateway": map[string]any{"injectionTemplate": "gateway"}},
				"global":   map[string]any{"network": o.Network},
			},
		},
	}
}

// Render renders the control plane, the east-west gateway and the objects
// that expose istiod and the cross-network port through it. It needs no
// cluster.
func Render(o Options) ([]Object, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "meshvm-iop-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var out []Object
	out = append(out, namespace(o))
	iops := []struct {
		name string
		spec map[string]any
	}{{"control-plane", controlPlane(o)}}
	if !o.OneNetwork {
		iops = append(iops, struct {
			name string
			spec map[string]any
		}{"eastwest", eastWest(o)})
	}
	for _, iop := range iops {
		objs, err := renderIOP(dir, iop.name, iop.spec, o.Istioctl)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	if !o.OneNetwork {
		exposed, err := exposeObjects(o.Revision)
		if err != nil {
			return nil, err
		}
		out = append(out, exposed...)
	}
	// meshvm's mark on all of it: down deletes only what carries it (or
	// what meshvm applied), and up never applies over another installer's.
	for _, o := range out {
		labels := o.GetLabels()
		if labels == nil {
			labels = map[string]string{}
		}
		labels[ownership.Label] = ownership.Value
		o.SetLabels(labels)
	}
	sortObjects(out)
	return out, nil
}

// RenderRevisions renders o for each revision (gateway included), the
// objects they share once, in apply order: everything meshvm installs
// across revisions, for down to uninstall.
func RenderRevisions(o Options, revs []string) ([]Object, error) {
	seen := map[string]bool{}
	var out []Object
	for _, rev := range revs {
		o.Revision, o.OneNetwork = rev, false
		objs, err := Render(o)
		if err != nil {
			return nil, err
		}
		for _, obj := range objs {
			if !seen[obj.Ref()] {
				seen[obj.Ref()] = true
				out = append(out, obj)
			}
		}
	}
	sortObjects(out)
	return out, nil
}

// sortObjects puts objects in apply order, fully: the charts' renderer
// emits objects of a kind in no fixed order, and every render (and every
// apply's report) must be the same.
func sortObjects(out []Object) {
	sort.SliceStable(out, func(i, j int) bool {
		if a, b := applyOrder(out[i]), applyOrder(out[j]); a != b {
			return a < b
		}
		return out[i].Ref() < out[j].Ref()
	})
}

func renderIOP(dir, name string, iop map[string]any, istioctl string) ([]Object, error) {
	data, err := yaml.Marshal(iop)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return nil, err
	}
	if istioctl != "" {
		return istioctlRender(istioctl, path)
	}
	sets, _, err := render.GenerateManifest([]string{path}, nil, false, nil, clog.NewConsoleLogger(os.Stderr, os.Stderr, nil))
	if err != nil {
		return nil, fmt.Errorf("render Istio (%s) from the embedded charts: %w", name, err)
	}
	var out []Object
	for _, s := range sets {
		for _, m := range s.Manifests {
			out = append(out, Object{Component: string(s.Component), Unstructured: m.Unstructured})
		}
	}
	return out, nil
}

// namespace is istio-system, labelled with the cluster's network so istiod
// knows which network its endpoints are on.
func namespace(o Options) Object {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("v1")
	u.SetKind("Namespace")
	u.SetName(Namespace)
	u.SetLabels(map[string]string{"topology.istio.io/network": o.Network})
	return Object{Component: "Network", Unstructured: u}
}

// exposeObjects are Istio's expose-istiod.yaml (expose-istiod-rev.yaml.tmpl
// for a revision) and cross-network-gateway.yaml samples, as typed objects.
// A revision's VirtualService routes only its own name (SNI
// istiod-<rev>.istio-system.svc, what pilot-agent dials), so the default
// revision's catch-all and every revision's route live side by side on one
// gateway while VMs move between them.
func exposeObjects(rev string) ([]Object, error) {
	selector := map[string]string{"istio": "eastwestgateway"}
	tls := func(port uint32, name string, mode networking.ServerTLSSettings_TLSmode, hosts ...string) *networking.Server {
		return &networking.Server{Port: &networking.Port{Number: port, Name: name, Protocol: "TLS"},
			Tls: &networking.ServerTLSSettings{Mode: mode}, Hosts: hosts}
	}
	istiod := IstiodService(rev)
	sni := "*"
	if workloadfiles.Revisioned(rev) {
		sni = istiod + "." + Namespace + ".svc"
	}
	route := func(port uint32, dst uint32) *networking.TLSRoute {
		return &networking.TLSRoute{
			Match: []*networking.TLSMatchAttributes{{Port: port, SniHosts: []string{sni}}},
			Route: []*networking.RouteDestination{{Destination: &networking.Destination{
				Host: istiod + "." + Namespace + ".svc.cluster.local", Port: &networking.PortSelector{Number: dst}}}},
		}
	}
	// Only the default revision's route takes the webhook port: VMs never
	// call it, and a catch-all per revision would collide.
	routes := []*networking.TLSRoute{route(15012, 15012)}
	vsName := "istiod-vs"
	if sni == "*" {
		routes = append(routes, route(15017, 443))
	} else {
		vsName += "-" + rev
	}
	objs := []runtime.Object{
		&clientnetworking.Gateway{
			TypeMeta:   typeMeta("Gateway"),
			ObjectMeta: objectMeta("istiod-gateway"),
			Spec: networking.Gateway{Selector: selector, Servers: []*networking.Server{
				tls(15012, "tls-istiod", networking.ServerTLSSettings_PASSTHROUGH, "*"),
				tls(15017, "tls-istiodwebhook", networking.ServerTLSSettings_PASSTHROUGH, "*"),
			}},
		},
		&clientnetworking.VirtualService{
			TypeMeta:   typeMeta("VirtualService"),
			ObjectMeta: objectMeta(vsName),
			Spec:       networking.VirtualService{Hosts: []string{"*"}, Gateways: []string{"istiod-gateway"}, Tls: routes},
		},
		&clientnetworking.Gateway{
			TypeMeta:   typeMeta("Gateway"),
			ObjectMeta: objectMeta("cross-network-gateway"),
			Spec: networking.Gateway{Selector: selector, Servers: []*networking.Server{
				tls(15443, "tls", networking.ServerTLSSettings_AUTO_PASSTHROUGH, "*.local"),
			}},
		},
	}
	var out []Object
	for _, o := range objs {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{Object: m}
		unstructured.RemoveNestedField(u.Object, "status")
		unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
		out = append(out, Object{Component: "EastWestExposure", Unstructured: u})
	}
	return out, nil
}

// applyOrder puts what others depend on first: namespaces and CRDs, then
// identities and configuration, then workloads, then Istio's own resources.
func applyOrder(o Object) int {
	switch o.GetKind() {
	case "Namespace":
		return 0
	case "CustomResourceDefinition":
		return 1
	case "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap":
		return 2
	case "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget":
		return 3
	case "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
		return 4
	}
	return 5
}

func typeMeta(kind string) metav1.TypeMeta {
	return metav1.TypeMeta{APIVersion: "networking.istio.io/v1", Kind: kind}
}

func objectMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: Namespace}
}

// IstiodService is the revision's istiod Deployment and Service name.
func IstiodService(rev string) string { return workloadfiles.IstiodService(rev) }

// MeshConfigName is the revision's mesh config ConfigMap.
func MeshConfigName(rev string) string { return workloadfiles.MeshConfigName(rev) }

// find returns the rendered object of that kind and name.
func find(objs []Object, kind, name string) (Object, bool) {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o, true
		}
	}
	return Object{}, false
}

// MeshConfig is the mesh configuration the render puts in the revision's
// istio ConfigMap: what its istiod reads.
func MeshConfig(objs []Object, rev string) (string, error) {
	name := MeshConfigName(rev)
	cm, ok := find(objs, "ConfigMap", name)
	if !ok {
		return "", fmt.Errorf("the render has no %s ConfigMap", name)
	}
	mesh, ok, _ := unstructured.NestedString(cm.Object, "data", "mesh")
	if !ok {
		return "", fmt.Errorf("the %s ConfigMap has no mesh key", name)
	}
	return mesh, nil
}

// IstiodEnv is the literal environment of the revision's rendered istiod
// container (values taken from the pod, like POD_NAME, are left to whoever
// runs it).
func IstiodEnv(objs []Object, rev string) (map[string]string, error) {
	d, ok := find(objs, "Deployment", IstiodService(rev))
	if !ok {
		return nil, fmt.Errorf("the render has no %s Deployment", IstiodService(rev))
	}
	containers, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	for _, c := range containers {
		cm, _ := c.(map[string]any)
		if cm["name"] != "discovery" {
			continue
		}
		env := map[string]string{}
		list, _ := cm["env"].([]any)
		for _, e := range list {
			em, _ := e.(map[string]any)
			name, _ := em["name"].(string)
			if v, ok := em["value"].(string); ok && name != "" {
				env[name] = v
			}
		}
		return env, nil
	}
	return nil, fmt.Errorf("the istiod Deployment has no discovery container")
}

// revisionValue is the IstioOperator's spec.revision: "" for the default
// revision, which Istio names no revision at all.
func revisionValue(rev string) string {
	if !workloadfiles.Revisioned(rev) {
		return ""
	}
	return rev
}

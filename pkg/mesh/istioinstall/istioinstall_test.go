package istioinstall

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func renderRecipe(t *testing.T) []Object {
	t.Helper()
	objs, err := Render(Options{MeshID: "mesh1", ClusterName: "cluster1", Network: "network1"})
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func images(o Object) []string {
	var out []string
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	for _, c := range cs {
		out = append(out, c.(map[string]any)["image"].(string))
	}
	return out
}

// The render is the recipe's install, from the charts alone.
func TestRenderIsTheRecipe(t *testing.T) {
	objs := renderRecipe(t)
	if objs[0].Ref() != "Namespace/istio-system" || objs[0].GetLabels()["topology.istio.io/network"] != "network1" {
		t.Errorf("first object %s %v, want istio-system labelled with the network", objs[0].Ref(), objs[0].GetLabels())
	}
	seenOther := false
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" && seenOther {
			t.Errorf("CRD %s comes after objects that may use it", o.GetName())
		}
		if o.GetKind() != "CustomResourceDefinition" && o.GetKind() != "Namespace" {
			seenOther = true
		}
		if o.GetName() == "istio-ingressgateway" {
			t.Errorf("the default ingress gateway is rendered (%s): it holds the ports the east-west gateway needs", o.Ref())
		}
	}
	if _, ok := find(objs, "CustomResourceDefinition", "workloadgroups.networking.istio.io"); !ok {
		t.Error("no WorkloadGroup CRD")
	}
	env, err := IstiodEnv(objs, "")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION": "true", "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS": "true", "CLUSTER_ID": "cluster1"} {
		if env[k] != v {
			t.Errorf("istiod env %s=%q, want %q", k, env[k], v)
		}
	}
	mesh, err := MeshConfig(objs, "")
	if err != nil || !strings.Contains(mesh, "meshId: mesh1") {
		t.Errorf("mesh config lacks the mesh id (%v):\n%s", err, mesh)
	}
	istiod, _ := find(objs, "Deployment", "istiod")
	ew, ok := find(objs, "Deployment", EastWestGateway)
	if !ok {
		t.Fatal("no east-west gateway Deployment")
	}
	// The charts' placeholder hub and tag are replaced.
	want := map[string]string{"istiod": DefaultHub + "/pilot:" + EmbeddedVersion}
	if got := images(istiod); len(got) != 1 || got[0] != want["istiod"] {
		t.Errorf("istiod images %v, want %s", got, want["istiod"])
	}
	// Gateways are injected: the injector sets their proxy image from its values.
	if got := images(ew); len(got) != 1 || got[0] != "auto" {
		t.Errorf("east-west images %v, want auto (injected)", got)
	}
	inj, _ := find(objs, "ConfigMap", "istio-sidecar-injector")
	vals, _, _ := unstructured.NestedString(inj.Object, "data", "values")
	if !strings.Contains(vals, `"hub": "`+DefaultHub+`"`) || !strings.Contains(vals, `"tag": "`+EmbeddedVersion+`"`) {
		t.Errorf("the injector's values lack hub %s and tag %s", DefaultHub, EmbeddedVersion)
	}
	if ew.GetLabels()["topology.istio.io/network"] != "network1" {
		t.Errorf("east-west gateway labels %v lack the network", ew.GetLabels())
	}
	svc, _ := find(objs, "Service", EastWestGateway)
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	var got []string
	for _, p := range ports {
		pm := p.(map[string]any)
		got = append(got, pm["name"].(string))
	}
	if strings.Join(got, ",") != "status-port,tls,tls-istiod,tls-webhook" {
		t.Errorf("east-west service ports %v", got)
	}
	for _, name := range []string{"istiod-gateway", "cross-network-gateway"} {
		if _, ok := find(objs, "Gateway", name); !ok {
			t.Errorf("no Gateway %s", name)
		}
	}
	vs, ok := find(objs, "VirtualService", "istiod-vs")
	if !ok {
		t.Fatal("no istiod VirtualService")
	}
	routes, _, _ := unstructured.NestedSlice(vs.Object, "spec", "tls")
	if len(routes) != 2 {
		t.Errorf("istiod-vs routes %d ports, want 15012 and 15017", len(routes))
	}
}

func TestRenderIsDeterministic(t *testing.T) {
	a, b := renderRecipe(t), renderRecipe(t)
	if len(a) != len(b) {
		t.Fatalf("%d vs %d objects", len(a), len(b))
	}
	for i := range a {
		if a[i].Ref() != b[i].Ref() {
			t.Fatalf("object %d: %s vs %s", i, a[i].Ref(), b[i].Ref())
		}
	}
}

func TestRenderNeedsIDs(t *testing.T) {
	_, err := Render(Options{MeshID: "m", ClusterName: "c"})
	if err == nil || !strings.Contains(err.Error(), "istio.network") {
		t.Errorf("got %v, want the missing field named", err)
	}
}

func TestLabKeepsWhatItCanRun(t *testing.T) {
	for _, o := range renderRecipe(t) {
		ok, why := LabRunnable(o)
		switch o.GetKind() {
		case "Deployment", "HorizontalPodAutoscaler", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration":
			if ok || why == "" {
				t.Errorf("%s kept on the lab", o.Ref())
			}
		default:
			if !ok {
				t.Errorf("%s skipped on the lab: %s", o.Ref(), why)
			}
		}
	}
}

// The charts hostctl installs and the istiod and pilot-agent the lab builds
// must be the same Istio: one pin in both modules.
func TestOnePinForIstio(t *testing.T) {
	pin := regexp.MustCompile(`(?m)^\s*istio\.io/istio (v\S+)`)
	var got []string
	for _, f := range []string{"../../../go.mod", "../../../lab/toolchain/go.mod"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m := pin.FindSubmatch(data)
		if m == nil {
			t.Fatalf("%s does not require istio.io/istio", f)
		}
		got = append(got, string(m[1]))
	}
	if got[0] != got[1] {
		t.Errorf("go.mod pins istio.io/istio %s, lab/toolchain/go.mod %s: pin both to the same version", got[0], got[1])
	}
}

// A revision's render is that revision's control plane, and its route
// through the east-west gateway takes only its own name, so it can sit
// beside the default revision's catch-all.
func TestRenderRevision(t *testing.T) {
	objs, err := Render(Options{MeshID: "mesh1", ClusterName: "cluster1", Network: "network1", Revision: "canary"})
	if err != nil {
		t.Fatal(err)
	}
	d, ok := find(objs, "Deployment", "istiod-canary")
	if !ok || d.GetLabels()["istio.io/rev"] != "canary" {
		t.Fatalf("no istiod-canary Deployment labelled with its revision (%v)", d.GetLabels())
	}
	if _, ok := find(objs, "Deployment", "istiod"); ok {
		t.Error("a revision's render has the default revision's istiod too")
	}
	env, err := IstiodEnv(objs, "canary")
	if err != nil || env["REVISION"] != "canary" {
		t.Errorf("istiod-canary env REVISION=%q (%v), want canary", env["REVISION"], err)
	}
	if _, err := MeshConfig(objs, "canary"); err != nil {
		t.Error(err)
	}
	if _, ok := find(objs, "VirtualService", "istiod-vs"); ok {
		t.Error("the revision's render carries the default revision's catch-all VirtualService")
	}
	vs, ok := find(objs, "VirtualService", "istiod-vs-canary")
	if !ok {
		t.Fatal("no istiod-vs-canary VirtualService")
	}
	tls, _, _ := unstructured.NestedSlice(vs.Object, "spec", "tls")
	if len(tls) != 1 {
		t.Fatalf("istiod-vs-canary has %d TLS routes, want one (15012)", len(tls))
	}
	route := tls[0].(map[string]any)
	match := route["match"].([]any)[0].(map[string]any)
	dst := route["route"].([]any)[0].(map[string]any)["destination"].(map[string]any)
	if sni := match["sniHosts"].([]any); len(sni) != 1 || sni[0] != "istiod-canary.istio-system.svc" || dst["host"] != "istiod-canary.istio-system.svc.cluster.local" {
		t.Errorf("istiod-vs-canary routes %v to %v, want istiod-canary.istio-system.svc to istiod-canary", sni, dst["host"])
	}
	gw, _ := find(objs, "Deployment", EastWestGateway)
	if gw.GetLabels()["istio.io/rev"] != "canary" {
		t.Errorf("the east-west gateway's proxy is served by revision %q, want canary (the only istiod)", gw.GetLabels()["istio.io/rev"])
	}
	for rev, want := range map[string][2]string{"": {"istiod", "istio"}, "default": {"istiod", "istio"}, "1-31": {"istiod-1-31", "istio-1-31"}} {
		if IstiodService(rev) != want[0] || MeshConfigName(rev) != want[1] {
			t.Errorf("revision %q: %s %s, want %v", rev, IstiodService(rev), MeshConfigName(rev), want)
		}
	}
}

// One network: no east-west gateway and nothing exposed through one; down
// renders every revision with the gateway, shared objects once.
func TestRenderOneNetworkAndAllRevisions(t *testing.T) {
	objs, err := Render(Options{MeshID: "mesh1", ClusterName: "cluster1", Network: "network1", OneNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.Component == "EastWestExposure" || o.GetName() == EastWestGateway {
			t.Errorf("one network renders %s", o.Ref())
		}
	}
	if _, ok := find(objs, "Deployment", "istiod"); !ok {
		t.Error("one network renders no istiod")
	}
	all, err := RenderRevisions(Options{MeshID: "mesh1", ClusterName: "cluster1", Network: "network1", OneNetwork: true}, []string{"", "canary"})
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]int{}
	for _, o := range all {
		refs[o.Ref()]++
	}
	for _, want := range []string{"Deployment/istio-system/istiod", "Deployment/istio-system/istiod-canary", "Deployment/istio-system/" + EastWestGateway,
		"VirtualService/istio-system/istiod-vs", "VirtualService/istio-system/istiod-vs-canary", "Namespace/istio-system"} {
		if refs[want] != 1 {
			t.Errorf("%s rendered %d times across revisions, want once", want, refs[want])
		}
	}
	if all[0].GetKind() != "Namespace" {
		t.Errorf("first object %s, want the namespace", all[0].Ref())
	}
}

package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// TestJoinYourIstio joins a VM to an Istio meshvm did not install: the
// lab's control plane made someone else's (no meshvm label or apply record
// on any of its objects, and the istiod Deployment their installer would
// have made for the istiod process that runs). istio.install always refuses
// it; auto joins it as it is (nothing applied) and the VM is Healthy; down
// removes the VM and the workload and leaves every object of that Istio as
// it was.
func TestJoinYourIstio(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	y := labAsYours(t, ctx, "jy1")
	work, state, kubeconfig, hub, clients := y.work, y.state, y.kubeconfig, y.hub, y.clients
	objs := disownIstio(t, ctx, kubeconfig)
	labels := map[string]string{"app": "istiod", "istio.io/rev": "default"}
	env := []corev1.EnvVar{{Name: "CLUSTER_ID", Value: "test"}, {Name: "PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION", Value: "true"},
		{Name: "PILOT_ENABLE_WORKLOAD_ENTRY_HEALTHCHECKS", Value: "true"}}
	istiod := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: "istio-system", Labels: labels},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "discovery", Image: "docker.io/istio/pilot:" + istioinstall.EmbeddedVersion, Env: env}}}}}}
	if _, err := clients.Kube.AppsV1().Deployments("istio-system").Create(ctx, istiod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hostIP := loadBalancerAddress(t, kubeconfig)
	go playKubeletAndLoadBalancer(ctx, clients.Kube, hostIP)
	before := yourIstio(t, ctx, kubeconfig, objs)

	cfgPath := filepath.Join(work, "join.yaml")
	write := func(install config.IstioInstall, extra ...string) {
		os.WriteFile(cfgPath, []byte("version: 1\nstateDir: "+state+"\ncluster:\n  provider: kubeconfig\n  kubeconfig: "+kubeconfig+
			"\nmachines: lab\nistio:\n  hub: "+hub+"\n  install: "+string(install)+"\n"+strings.Join(extra, "")+"vms:\n- name: jy1\n"), 0o600)
	}
	write(config.InstallAlways)
	if out, err := run(t, "--config", cfgPath, "up", "--timeout", "2m"); err == nil || !strings.Contains(err.Error(), "istio.install is always") ||
		!strings.Contains(err.Error(), "Deployment istio-system/istiod (revision default, Istio "+istioinstall.EmbeddedVersion+", cluster test") {
		t.Fatalf("up with istio.install always on an Istio of yours: %v\n%s\nwant a refusal naming it", err, out)
	}
	write(config.InstallAuto)
	out, err := run(t, "--config", cfgPath, "up", "--timeout", "5m")
	logOutput(t, "up joining your Istio", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"joining the Istio of yours: Deployment istio-system/istiod", "through istio-system/istio-eastwestgateway at " + hostIP, "Healthy"} {
		if !strings.Contains(out, want) {
			t.Errorf("up lacks %q", want)
		}
	}
	if strings.Contains(out, "objects rendered") {
		t.Error("up rendered and applied Istio although it joined one")
	}
	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	var status []fleet.VMStatus
	if jerr := json.Unmarshal([]byte(out), &status); err != nil || jerr != nil || len(status) != 1 || !status[0].OK {
		t.Fatalf("vm status: %v %v\n%s", err, jerr, out)
	}
	if out, err := run(t, "--config", cfgPath, "istio", "status"); err != nil || !strings.Contains(out, "the VMs join it; meshvm installs and changes none of it") {
		t.Errorf("istio status on a joined Istio: %v\n%s", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "doctor"); err != nil || !strings.Contains(out, "its gateway and ports are as you run them") {
		t.Errorf("doctor on a joined Istio: %v\n%s", err, out)
	}
	if out, err := run(t, "--config", cfgPath, "down"); err != nil || !strings.Contains(out, "Istio is yours (istio-system/istiod): nothing of it removed") {
		t.Errorf("down: %v\n%s", err, out)
	}
	after := yourIstio(t, ctx, kubeconfig, objs)
	for ref, was := range before {
		if now := after[ref]; now != was {
			t.Errorf("%s changed:\nbefore %s\nafter  %s", ref, was, now)
		}
	}
	if ns, err := clients.Kube.CoreV1().Namespaces().Get(ctx, "vmns", metav1.GetOptions{}); err == nil && ns.DeletionTimestamp == nil {
		t.Error("the workload namespace meshvm made is left after down")
	}

	// One network, no east-west gateway: the VMs reach istiod directly at
	// the address given, on the mesh's network.
	if err := clients.Kube.CoreV1().Services("istio-system").Delete(ctx, istioinstall.EastWestGateway, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "--config", cfgPath, "up", "--timeout", "2m"); err == nil || !strings.Contains(err.Error(), "set istio.istiodAddress") {
		t.Fatalf("up on a mesh without a gateway and no istiod address: %v\n%s\nwant the two ways named", err, out)
	}
	write(config.InstallAuto, "  istiodAddress: "+hostIP+"\n")
	if out, err := run(t, "--config", cfgPath, "up", "--timeout", "2m"); err == nil || !strings.Contains(err.Error(), `set workload.network to "kube-network"`) {
		t.Fatalf("up on one network with the VMs' own network: %v\n%s\nwant workload.network named", err, out)
	}
	// (Another namespace: the lab runs no namespace controller to finish deleting vmns.)
	write(config.InstallAuto, "  istiodAddress: "+hostIP+"\nworkload:\n  network: kube-network\n  namespace: vmone\n")
	out, err = run(t, "--config", cfgPath, "up", "--timeout", "5m")
	logOutput(t, "up on one network", out)
	if err != nil || !strings.Contains(out, "VMs reach it directly (istio.istiodAddress, one network) at "+hostIP) {
		t.Fatalf("up on one network: %v", err)
	}
	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	status = nil
	if jerr := json.Unmarshal([]byte(out), &status); err != nil || jerr != nil || len(status) != 1 || !status[0].OK ||
		!strings.HasSuffix(status[0].WorkloadEntry, "-kube-network") || status[0].IstiodDNS != hostIP {
		t.Errorf("vm status on one network: %v %v\n%s\nwant Healthy, registered on kube-network, istiod at %s", err, jerr, out, hostIP)
	}
	if out, err := run(t, "--config", cfgPath, "down"); err != nil {
		t.Errorf("down: %v\n%s", err, out)
	}
}

// disownIstio makes the Istio in the cluster someone else's: every object
// of meshvm's render loses meshvm's label and the record of meshvm's apply.
// It returns those objects.
func disownIstio(t *testing.T, ctx context.Context, kubeconfig string) []*unstructured.Unstructured {
	t.Helper()
	dyn, mapper := dynamicClients(t, kubeconfig)
	rendered, err := istioinstall.Render(fleet.IstioOptions(config.Default()))
	if err != nil {
		t.Fatal(err)
	}
	var out []*unstructured.Unstructured
	for _, o := range rendered {
		ri := resourceOf(t, dyn, mapper, o.Unstructured)
		cur, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			continue // not in the lab (its workloads and webhooks)
		}
		labels := cur.GetLabels()
		delete(labels, ownership.Label)
		cur.SetLabels(labels)
		cur.SetManagedFields([]metav1.ManagedFieldsEntry{{}}) // clears them
		if cur, err = ri.Update(ctx, cur, metav1.UpdateOptions{FieldManager: "their-installer"}); err != nil {
			t.Fatalf("disown %s: %v", o.Ref(), err)
		}
		if ownership.Owned(cur) {
			t.Fatalf("%s is still meshvm's after disowning", o.Ref())
		}
		out = append(out, cur)
	}
	return out
}

// yourIstio is each object's metadata (but its resourceVersion and managed
// fields) and content (but its status), as JSON by reference: what down
// must leave as it was; the istiod Deployment too.
func yourIstio(t *testing.T, ctx context.Context, kubeconfig string, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	dyn, mapper := dynamicClients(t, kubeconfig)
	out := map[string]string{}
	dep := &unstructured.Unstructured{}
	dep.SetAPIVersion("apps/v1")
	dep.SetKind("Deployment")
	dep.SetNamespace("istio-system")
	dep.SetName("istiod")
	for _, o := range append(objs, dep) {
		ref := o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
		cur, err := resourceOf(t, dyn, mapper, o).Get(ctx, o.GetName(), metav1.GetOptions{})
		if err != nil {
			out[ref] = "error: " + err.Error()
			continue
		}
		cur.SetResourceVersion("")
		cur.SetManagedFields(nil)
		delete(cur.Object, "status")
		b, _ := json.Marshal(cur.Object)
		out[ref] = string(b)
	}
	return out
}

func dynamicClients(t *testing.T, kubeconfig string) (dynamic.Interface, meta.RESTMapper) {
	t.Helper()
	rc, err := fleet.RestConfig(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return dynamic.NewForConfigOrDie(rc), restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
}

func resourceOf(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, o *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s: %v", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	return dyn.Resource(m.Resource)
}

package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/instance"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
	"github.com/meshvm/meshvm/pkg/mesh/traffic"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// TestUpOnYourCluster runs up through the path a real cluster takes
// (cluster.provider kubeconfig): the whole Istio render applied, a wait for
// istiod and the east-west gateway's LoadBalancer address, the sidecar
// pulled from a proxyv2 image for the VM's architecture, and the VM pointed
// at istiod through the gateway's address. The cluster is the lab's real
// API server with its real istiod process; what it lacks (a kubelet, a load
// balancer) the test plays: it marks the two Deployments available and
// gives the gateway's Service the host's address, where istiod listens. The
// image is the lab's pilot-agent and Envoy stand-in, served by a real
// registry in-process.
func TestUpOnYourCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	y := labAsYours(t, ctx, "yc1")
	work, state, kubeconfig, hub, clients := y.work, y.state, y.kubeconfig, y.hub, y.clients
	cfgPath := filepath.Join(work, "yours.yaml")
	os.WriteFile(cfgPath, []byte("version: 1\nstateDir: "+state+"\ncluster:\n  provider: kubeconfig\n  kubeconfig: "+kubeconfig+
		"\nmachines: lab\nistio:\n  hub: "+hub+"\nvms:\n- name: yc1\n"), 0o600)

	// An Istio control plane of yours (here a revision's istiod) next to
	// meshvm's: up does not move the VMs to it, names it and changes
	// nothing in the cluster.
	foreign := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "istiod-canary", Namespace: "istio-system", Labels: map[string]string{"app": "istiod", "istio.io/rev": "canary"}},
		Spec: appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "istiod", "istio.io/rev": "canary"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "istiod", "istio.io/rev": "canary"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "discovery", Image: "docker.io/istio/pilot:1.31.0"}}}}}}
	if _, err := clients.Kube.AppsV1().Deployments("istio-system").Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	before := istioSystem(t, ctx, clients)
	out, err := run(t, "--config", cfgPath, "up", "--timeout", "2m")
	if err == nil || !strings.Contains(err.Error(), "Deployment istio-system/istiod-canary (revision canary, Istio 1.31.0") || !strings.Contains(err.Error(), "meshvm changes none of it") ||
		!strings.Contains(err.Error(), "meshvm's own Istio is in this cluster") {
		t.Fatalf("up with an istiod of yours: got %v\n%s\nwant it named and left", err, out)
	}
	if after := istioSystem(t, ctx, clients); after != before {
		t.Errorf("up changed istio-system although it found a control plane of yours")
	}
	clients.Kube.AppsV1().Deployments("istio-system").Delete(ctx, foreign.Name, metav1.DeleteOptions{})

	// An object of the render that someone else made: up and down leave it
	// byte for byte.
	vs, err := clients.Istio.NetworkingV1().VirtualServices("istio-system").Get(ctx, "istiod-vs", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := clients.Istio.NetworkingV1().VirtualServices("istio-system").Delete(ctx, vs.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	theirs := vs.DeepCopy()
	theirs.ObjectMeta = metav1.ObjectMeta{Name: vs.Name, Namespace: vs.Namespace, Labels: map[string]string{"team": "mesh"}}
	if theirs, err = clients.Istio.NetworkingV1().VirtualServices("istio-system").Create(ctx, theirs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	theirsJSON, _ := json.Marshal(theirs)

	// A LoadBalancer holding the gateway's ports: up names it and stops.
	lb := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "istio-ingressgateway", Namespace: "istio-system"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Name: "tls", Port: 15443}}}}
	if _, err := clients.Kube.CoreV1().Services("istio-system").Create(ctx, lb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "--config", cfgPath, "up", "--timeout", "2m")
	if err == nil || !strings.Contains(err.Error(), "istio-system/istio-ingressgateway holds 15443") || !strings.Contains(err.Error(), "delete that LoadBalancer") {
		t.Fatalf("up with a LoadBalancer in the way: got %v\n%s\nwant it named with the fix", err, out)
	}
	clients.Kube.CoreV1().Services("istio-system").Delete(ctx, lb.Name, metav1.DeleteOptions{})

	hostIP := loadBalancerAddress(t, kubeconfig)
	go playKubeletAndLoadBalancer(ctx, clients.Kube, hostIP)
	out, err = run(t, "--config", cfgPath, "up", "--timeout", "5m")
	logOutput(t, "up on your cluster", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"existing cluster, Kubernetes", "east-west gateway at " + hostIP, "Healthy",
		"VirtualService/istio-system/istiod-vs exists and is not meshvm's: left as it is"} {
		if !strings.Contains(out, want) {
			t.Errorf("up lacks %q", want)
		}
	}
	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	var status []fleet.VMStatus
	if jerr := json.Unmarshal([]byte(out), &status); err != nil || jerr != nil || !status[0].OK {
		t.Fatalf("vm status: %v %v\n%s", err, jerr, out)
	}
	if status[0].IstiodDNS != hostIP {
		t.Errorf("istiod resolves on the VM to %s, want the gateway's address %s", status[0].IstiodDNS, hostIP)
	}
	// The sidecar came out of the image, cached by digest in the state directory.
	if m, _ := filepath.Glob(filepath.Join(state, "sidecar", "proxyv2", "*", "pilot-agent")); len(m) != 1 {
		t.Errorf("sidecar cache: %v, want one pulled pilot-agent", m)
	}
	out, err = run(t, "--config", cfgPath, "up")
	if err != nil || !strings.Contains(out, "0 created, 0 configured") || !strings.Contains(out, "nothing sent") {
		t.Errorf("second up: %v\n%s\nwant nothing changed", err, out)
	}
	// vm onboard re-onboards without touching Istio: istiod is found at
	// the gateway's address, only the fresh token goes.
	out, err = run(t, "--config", cfgPath, "vm", "onboard", "yc1")
	if err != nil || strings.Contains(out, "objects rendered") || !strings.Contains(out, "sent /var/run/secrets/tokens/istio-token;") {
		t.Errorf("vm onboard: %v\n%s\nwant the token sent and Istio left alone", err, out)
	}
	for _, args := range [][]string{{"istio", "status"}, {"doctor"}} {
		if out, err := run(t, append([]string{"--config", cfgPath}, args...)...); err != nil {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}

	// verify: the VMs are lab VMs (no data path), so traffic is not checked;
	// the mesh-side client pod is tried directly: here it cannot run (no
	// kubelet; the injection webhook it needs is unreachable), the failure
	// names it, and no pod is left.
	if out, err := run(t, "--config", cfgPath, "verify"); err != nil || strings.Count(out, "skipped") != 2 || !strings.Contains(out, "Envoy stand-in") {
		t.Errorf("verify: %v\n%s", err, out)
	}
	_, err = traffic.Fetch(ctx, clients.Kube, traffic.DefaultImage, "http://external-app.vmns:8000/", 5*time.Second)
	t.Logf("mesh client pod on the lab: %v", err)
	if err == nil || !strings.Contains(err.Error(), "pod") || !strings.Contains(err.Error(), traffic.Namespace) {
		t.Errorf("client pod without a kubelet: got %v, want the pod's failure named", err)
	}
	if pods, _ := clients.Kube.CoreV1().Pods(traffic.Namespace).List(ctx, metav1.ListOptions{}); pods != nil && len(pods.Items) > 0 && pods.Items[0].DeletionTimestamp == nil {
		t.Errorf("client pod left: %s", pods.Items[0].Name)
	}

	// meshvm's Istio on one network: the VMs, given istiod's address and
	// the pods' network, reach istiod directly; no gateway is waited for.
	os.WriteFile(cfgPath, []byte("version: 1\nstateDir: "+state+"\ncluster:\n  provider: kubeconfig\n  kubeconfig: "+kubeconfig+
		"\nmachines: lab\nistio:\n  hub: "+hub+"\n  istiodAddress: "+hostIP+"\nworkload:\n  network: kube-network\nvms:\n- name: yc1\n"), 0o600)
	out, err = run(t, "--config", cfgPath, "up", "--timeout", "5m")
	logOutput(t, "up on one network", out)
	if err != nil || !strings.Contains(out, "one network: VMs reach it directly at "+hostIP) || strings.Contains(out, "east-west gateway at") {
		t.Errorf("up of meshvm's Istio on one network: %v", err)
	}
	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	status = nil
	if jerr := json.Unmarshal([]byte(out), &status); err != nil || jerr != nil || !status[0].OK || !strings.HasSuffix(status[0].WorkloadEntry, "-kube-network") {
		t.Errorf("vm status on one network: %v %v\n%s\nwant Healthy on kube-network", err, jerr, out)
	}

	out, err = run(t, "--config", cfgPath, "down")
	logOutput(t, "down", out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clients.Kube.AppsV1().Deployments("istio-system").Get(ctx, istioinstall.EastWestGateway, metav1.GetOptions{}); err == nil {
		t.Error("the east-west gateway of the earlier install is left after a down on one network")
	}
	if _, err := clients.Kube.AppsV1().Deployments("istio-system").Get(ctx, "istiod", metav1.GetOptions{}); err == nil {
		t.Error("istiod's Deployment is left after down")
	}
	if ns, err := clients.Kube.CoreV1().Namespaces().Get(ctx, "vmns", metav1.GetOptions{}); err == nil && ns.DeletionTimestamp == nil {
		t.Error("the workload namespace is left after down")
	}
	if ns, err := clients.Kube.CoreV1().Namespaces().Get(ctx, traffic.Namespace, metav1.GetOptions{}); err == nil && ns.DeletionTimestamp == nil {
		t.Error("verify's namespace is left after down")
	}
	if _, err := clients.Kube.Discovery().ServerVersion(); err != nil {
		t.Errorf("down took the cluster with it: %v", err)
	}
	if now, err := clients.Istio.NetworkingV1().VirtualServices("istio-system").Get(ctx, "istiod-vs", metav1.GetOptions{}); err != nil {
		t.Errorf("down deleted the VirtualService meshvm did not make: %v", err)
	} else if nowJSON, _ := json.Marshal(now); string(nowJSON) != string(theirsJSON) {
		t.Errorf("the VirtualService meshvm did not make changed:\nbefore %s\nafter  %s", theirsJSON, nowJSON)
	}
}

// istioSystem is every ConfigMap, Service and Deployment in istio-system,
// as JSON: what must not change when up finds a control plane of yours.
func istioSystem(t *testing.T, ctx context.Context, c workload.Clients) string {
	t.Helper()
	cms, err1 := c.Kube.CoreV1().ConfigMaps("istio-system").List(ctx, metav1.ListOptions{})
	svcs, err2 := c.Kube.CoreV1().Services("istio-system").List(ctx, metav1.ListOptions{})
	deps, err3 := c.Kube.AppsV1().Deployments("istio-system").List(ctx, metav1.ListOptions{})
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	var kept []corev1.ConfigMap
	for _, cm := range cms.Items {
		// istiod's leader election renews these by itself.
		if _, lock := cm.Annotations["control-plane.alpha.kubernetes.io/leader"]; !lock {
			kept = append(kept, cm)
		}
	}
	b, _ := json.Marshal([]any{kept, svcs.Items, deps.Items})
	return string(b)
}

// proxyRegistry serves a real registry in-process holding hub/proxyv2 at
// the embedded version for this machine's architecture, made of the lab's
// sidecar build, and returns the hub.
func proxyRegistry(t *testing.T, root string) string {
	t.Helper()
	ctx := context.Background()
	bins, err := build.Build(ctx, build.Options{ModuleDir: filepath.Join(root, "lab", "toolchain"), CacheDir: build.DefaultCacheDir(), Progress: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	bootstrap, err := build.IstioFile(ctx, filepath.Join(root, "lab", "toolchain"), "tools/packaging/common/envoy_bootstrap.json")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for dst, src := range map[string]string{"usr/local/bin/pilot-agent": bins.Path("pilot-agent"), "usr/local/bin/envoy": bins.Path("lab-envoy"),
		"var/lib/istio/envoy/envoy_bootstrap_tmpl.json": bootstrap} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		tw.WriteHeader(&tar.Header{Name: dst, Mode: 0o755, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}})
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	hub := strings.TrimPrefix(srv.URL, "http://") + "/istio"
	ref, err := name.ParseReference(hub + "/proxyv2:" + istioinstall.EmbeddedVersion)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	return hub
}

// loadBalancerAddress stands for the east-west gateway's LoadBalancer
// address: the lab instance's istiod address, where its gateway listens
// (the instance's own, so labs side by side each have theirs). The lab
// VMs reach it through their default route, as they would a
// LoadBalancer's; hostctl learns it only from the Service's status.
func loadBalancerAddress(t *testing.T, kubeconfig string) string {
	t.Helper()
	lab := filepath.Dir(filepath.Dir(kubeconfig)) // <state>/lab/cluster/kubeconfig
	inst, ok := instance.Lookup(lab)
	if !ok {
		t.Fatalf("no lab instance at %s to stand for the LoadBalancer", lab)
	}
	return inst.IstiodIP().String()
}

// playKubeletAndLoadBalancer does what the lab's cluster has nobody for:
// it marks istiod's and the gateway's Deployments available (istiod runs
// as the lab's process) and gives the gateway's Service a LoadBalancer
// address, until ctx ends.
func playKubeletAndLoadBalancer(ctx context.Context, kc kubernetes.Interface, addr string) {
	for ctx.Err() == nil {
		for _, n := range []string{"istiod", istioinstall.EastWestGateway} {
			d, err := kc.AppsV1().Deployments(istioinstall.Namespace).Get(ctx, n, metav1.GetOptions{})
			if err != nil || d.Status.AvailableReplicas > 0 {
				continue
			}
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, ReadyReplicas: 1, AvailableReplicas: 1, UpdatedReplicas: 1,
				Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}}}
			kc.AppsV1().Deployments(istioinstall.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
		}
		if s, err := kc.CoreV1().Services(istioinstall.Namespace).Get(ctx, istioinstall.EastWestGateway, metav1.GetOptions{}); err == nil && len(s.Status.LoadBalancer.Ingress) == 0 {
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: addr}}
			kc.CoreV1().Services(istioinstall.Namespace).UpdateStatus(ctx, s, metav1.UpdateOptions{})
		}
		select {
		case <-ctx.Done():
		case <-time.After(3 * time.Second):
		}
	}
}

package mesh

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshvm/meshvm/lab/build"
	"github.com/meshvm/meshvm/lab/cluster"
	"github.com/meshvm/meshvm/lab/labtest"
	"github.com/meshvm/meshvm/pkg/mesh/istioinstall"
)

// TestIstiodOnLabCluster installs Istio's render on the real lab API server
// and runs real istiod with it: the CRDs are established, a second apply
// changes nothing, istiod gets ready, and its namespace controller publishes
// istio-ca-root-cert into a new namespace (what VMs need).
func TestIstiodOnLabCluster(t *testing.T) {
	labtest.RequireBuild(t)
	cache := labtest.Cache()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	mod := labtest.ModuleDir
	bins, err := build.Build(ctx, build.Options{ModuleDir: mod, CacheDir: cache, Progress: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cl := filepath.Join(dir, "cluster")
	t.Cleanup(func() {
		Down(context.Background(), filepath.Join(dir, "istio"))
		cluster.Down(context.Background(), cl)
	})
	if err := cluster.Up(ctx, cluster.Config{Dir: cl, APIServer: bins.Path("kube-apiserver"), ControllerManager: bins.Path("kube-controller-manager")}); err != nil {
		t.Fatal(err)
	}
	objs, err := istioinstall.Render(istioinstall.Options{MeshID: "mesh1", ClusterName: "test", Network: "net1"})
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := clientcmd.BuildConfigFromFlags("", cluster.Kubeconfig(cl))
	changes, err := istioinstall.Apply(ctx, rc, objs, istioinstall.LabRunnable)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("install: %s", istioinstall.Summary(changes))
	// Applied again, the same render changes nothing.
	again, err := istioinstall.Apply(ctx, rc, objs, istioinstall.LabRunnable)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range again {
		if c.Action != "unchanged" && c.Action != "skipped" {
			t.Errorf("second apply: %s %s, want unchanged", c.Ref, c.Action)
		}
	}
	mesh, _ := istioinstall.MeshConfig(objs, "")
	env, _ := istioinstall.IstiodEnv(objs, "")
	cfg := Config{Dir: filepath.Join(dir, "istio"), Istiod: bins.Path("pilot-discovery"), Gateway: bins.Path("lab-envoy"), Kubeconfig: cluster.Kubeconfig(cl),
		Mesh: mesh, Env: env, ClusterID: "test", Progress: os.Stderr}
	if err := Up(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	kc := kubernetes.NewForConfigOrDie(rc)
	if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "vmns"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		cm, err := kc.CoreV1().ConfigMaps("vmns").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{})
		if err == nil && strings.Contains(cm.Data["root-cert.pem"], "BEGIN CERTIFICATE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("istiod never published istio-ca-root-cert in vmns: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	var out strings.Builder
	cfg.Progress = &out
	if err := Up(ctx, cfg); err != nil || !strings.Contains(out.String(), "already running") {
		t.Errorf("second Up: %v, said %q; want istiod kept", err, out.String())
	}
}

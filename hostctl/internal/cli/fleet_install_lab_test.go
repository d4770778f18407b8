package cli

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshvm/meshvm/hostctl/internal/agentbin"
	"github.com/meshvm/meshvm/lab/cluster/clustertest"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/mesh/fleetinstall"
)

// hostctl fleet install and uninstall on a cluster of yours: the lab's
// real kube-apiserver and kube-controller-manager, the image pushed to a
// real registry in-process. The lab has no scheduler, kubelet or
// containerd, so the controller's pods are created (and admitted under the
// restricted Pod Security level) but never run: the test plays the
// kubelet's part in the Deployment's status. The controller binary is a
// small static program standing for it (./controller is another task's).
func TestFleetInstallOnYourCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	rc, kubeconfig := clustertest.Start(ctx, t)
	work := t.TempDir()
	kc := kubernetes.NewForConfigOrDie(rc)
	for _, ns := range []string{"vmns", "istio-system"} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	repo := strings.TrimPrefix(srv.URL, "http://") + "/meshvm/meshvm-controller"

	ctrlDir := filepath.Join(work, "bin")
	os.MkdirAll(ctrlDir, 0o755)
	src := filepath.Join(work, "main.go")
	os.WriteFile(src, []byte("package main\n\nfunc main() {}\n"), 0o644)
	for _, arch := range []string{"amd64", "arm64"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(ctrlDir, agentbin.ControllerName(arch)), src)
		cmd.Dir = work
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GO111MODULE=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build a stand-in controller: %v\n%s", err, out)
		}
	}
	cfg := filepath.Join(work, "meshvm.yaml")
	os.WriteFile(cfg, []byte("version: 1\nstateDir: "+filepath.Join(work, "state")+"\ncluster:\n  provider: kubeconfig\n  kubeconfig: "+kubeconfig+"\nmachines: lab\n"), 0o600)

	if _, err := run(t, "--config", cfg, "fleet", "install", "--controller-dir", ctrlDir); err == nil || !strings.Contains(err.Error(), "give --registry REPOSITORY") {
		t.Errorf("install on a cluster of yours without a registry: %v", err)
	}
	if _, err := run(t, "--config", cfg, "--provider", "lab", "fleet", "install", "--controller-dir", ctrlDir); err == nil || !strings.Contains(err.Error(), "the lab has no kubelet") {
		t.Errorf("install in the lab: %v", err)
	}

	kctx, stop := context.WithCancel(ctx)
	defer stop()
	go playControllerKubelet(kctx, kc)
	start := time.Now()
	out, err := run(t, "--config", cfg, "fleet", "install", "--registry", repo, "--controller-dir", ctrlDir, "--timeout", "3m")
	if err != nil {
		t.Fatalf("fleet install: %v\n%s", err, out)
	}
	t.Logf("fleet install (%v):\n%s", time.Since(start).Round(time.Millisecond), out)
	for _, want := range []string{"[1/3] image: " + repo + "@sha256:", " pushed (linux/amd64, linux/arm64)", "[2/3] cluster: 12 objects: 12 created",
		"[3/3] controller: Deployment meshvm-system/meshvm-controller available", "fleet install: controller available, image " + repo + "@sha256:"} {
		if !strings.Contains(out, want) {
			t.Errorf("fleet install's lines lack %q:\n%s", want, out)
		}
	}
	// The pods the real ReplicaSet controller made were admitted by the
	// real Pod Security admission under "restricted".
	pods, err := kc.CoreV1().Pods(fleetinstall.DefaultNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + fleetinstall.Name})
	deadline := time.Now().Add(30 * time.Second)
	for err == nil && len(pods.Items) < 2 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		pods, err = kc.CoreV1().Pods(fleetinstall.DefaultNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + fleetinstall.Name})
	}
	if err != nil || len(pods.Items) != 2 {
		ev, _ := kc.CoreV1().Events(fleetinstall.DefaultNamespace).List(ctx, metav1.ListOptions{})
		var msgs []string
		for _, e := range ev.Items {
			msgs = append(msgs, e.Reason+": "+e.Message)
		}
		t.Errorf("controller pods: %v, %v; want 2 admitted (events: %s)", len(pods.Items), err, strings.Join(msgs, "; "))
	}

	out, err = run(t, "--config", cfg, "fleet", "install", "--registry", repo, "--controller-dir", ctrlDir, "-o", "json")
	if err != nil {
		t.Fatalf("fleet install again: %v\n%s", err, out)
	}
	var r fleet.ControllerReport
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &r); err != nil {
		t.Fatalf("-o json: %v\n%s", err, out)
	}
	if r.Pushed == nil || r.Pushed.Action != "unchanged" || !r.Available || r.Summary != "0 created, 0 configured, 12 unchanged, 0 skipped" {
		t.Errorf("second install: %+v, want the image and every object unchanged", r)
	}
	d, err := kc.AppsV1().Deployments(fleetinstall.DefaultNamespace).Get(ctx, fleetinstall.Name, metav1.GetOptions{})
	if err != nil || d.Spec.Template.Spec.Containers[0].Image != r.Image || !strings.Contains(r.Image, "@sha256:") {
		t.Errorf("the Deployment runs %v (%v), want the pushed digest %s", d, err, r.Image)
	}

	stop()
	out, err = run(t, "--config", cfg, "fleet", "uninstall")
	if err != nil {
		t.Fatalf("fleet uninstall: %v\n%s", err, out)
	}
	if !strings.Contains(out, "fleet uninstall: 11 deleted, 0 absent, 0 kept, 1 skipped") || !strings.Contains(out, "CustomResourceDefinition/meshvms.meshvm.io skipped: "+fleetinstall.KeptCRD) {
		t.Errorf("fleet uninstall:\n%s", out)
	}
	if _, err := kc.CoreV1().Namespaces().Get(ctx, "vmns", metav1.GetOptions{}); err != nil {
		t.Errorf("the workload's namespace after uninstall: %v", err)
	}
	if _, err := kc.AppsV1().Deployments(fleetinstall.DefaultNamespace).Get(ctx, fleetinstall.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the Deployment after uninstall: %v", err)
	}
}

// playControllerKubelet marks the controller's Deployment available, as
// the kubelets would once its pods run: the lab has none.
func playControllerKubelet(ctx context.Context, kc kubernetes.Interface) {
	for ctx.Err() == nil {
		d, err := kc.AppsV1().Deployments(fleetinstall.DefaultNamespace).Get(ctx, fleetinstall.Name, metav1.GetOptions{})
		if err == nil && d.Status.AvailableReplicas < 2 {
			d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 2, ReadyReplicas: 2, AvailableReplicas: 2, UpdatedReplicas: 2,
				Conditions: []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable"}}}
			kc.AppsV1().Deployments(fleetinstall.DefaultNamespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
		}
		select {
		case <-ctx.Done():
		case <-time.After(300 * time.Millisecond):
		}
	}
}

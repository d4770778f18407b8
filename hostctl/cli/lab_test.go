package cli

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshvm/meshvm/hostctl/config"
	"github.com/meshvm/meshvm/pkg/credinfo"
	"github.com/meshvm/meshvm/pkg/envfile"
	"github.com/meshvm/meshvm/pkg/labbuild"
	"github.com/meshvm/meshvm/pkg/labmachine"
	"github.com/meshvm/meshvm/pkg/procs"
	"github.com/meshvm/meshvm/pkg/workload"
)

// TestUpOnLab is the end-to-end proof on real parts: kube-apiserver,
// kube-controller-manager and istiod built from source, a Debian VM booting
// systemd, the real vmagent and pilot-agent (with the lab's Envoy stand-in).
func TestUpOnLab(t *testing.T) {
	if os.Getenv("MESHVM_LAB") == "" || os.Getenv("MESHVM_LAB_BUILD") == "" {
		t.Skip("set MESHVM_LAB=1 and MESHVM_LAB_BUILD=1 to run hostctl up on the lab")
	}
	root, _ := filepath.Abs("../..")
	work := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(work, "vmagent-linux-"+runtime.GOARCH), "./vmagent")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build vmagent: %v\n%s", err, out)
	}
	t.Setenv("MESHVM_AGENT_DIR", work)
	t.Setenv("MESHVM_SOURCE", root)
	cfgPath := filepath.Join(work, "meshvm.yaml")
	os.WriteFile(cfgPath, []byte("version: 1\ncluster:\n  provider: lab\nvms:\n- name: e2e1\n"), 0o600)
	state := filepath.Join(work, ".meshvm")
	t.Cleanup(func() {
		if _, err := run(t, "--config", cfgPath, "down"); err != nil {
			t.Errorf("down: %v", err)
		}
		for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
			if _, ok := procs.Dir(filepath.Join(state, "lab", "cluster")).Running(name); ok {
				t.Errorf("%s still running after down", name)
			}
		}
		if _, err := os.Stat("/run/netns/meshvm-e2e1"); err == nil {
			t.Error("the VM's network namespace is left after down")
		}
	})

	out, err := run(t, "--config", cfgPath, "up", "--timeout", "50m")
	t.Logf("first up:\n%s", out)
	if err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "--config", cfgPath, "up")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"WorkloadGroup vmns/external-app unchanged", "nothing sent", "Healthy"} {
		if !strings.Contains(out, want) {
			t.Errorf("second up lacks %q:\n%s", want, out)
		}
	}

	out, err = run(t, "--config", cfgPath, "vm", "status", "-o", "json")
	if err != nil {
		t.Fatalf("vm status: %v\n%s", err, out)
	}
	var status []VMStatus
	if err := json.Unmarshal([]byte(out), &status); err != nil {
		t.Fatalf("vm status -o json: %v\n%s", err, out)
	}
	if s := status[0]; !s.OK || s.Healthy != "True" || s.Sidecar != "active/running" || s.IstiodDNS == "" || s.App != "HTTP 200" || s.CertExpiry == "" {
		t.Errorf("vm status: got %+v, want a healthy, onboarded VM", s)
	}

	out, err = run(t, "--config", cfgPath, "verify")
	if err != nil || !regexp.MustCompile(`istiod resolves on the VM\s+ok\s`).MatchString(out) || strings.Count(out, "skipped") != 2 || !strings.Contains(out, "no Envoy data path") {
		t.Errorf("verify: got %v\n%s\nwant istiod resolved and both traffic checks said to be impossible here", err, out)
	}

	cfg, err := config.Load(cfgPath, true, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(state, "lab", "cluster", "kubeconfig")
	clients, err := kubeClients(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	lab := labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), filepath.Join(state, "lab", "vms"), cacheDir())
	m, err := lab.Info(context.Background(), "e2e1")
	if err != nil {
		t.Fatal(err)
	}
	spec := workloadSpec(cfg)
	ctx := context.Background()

	// Health follows the app: stop it, the entry turns unhealthy; start it, back.
	if _, err := lab.Exec(ctx, "e2e1", nil, "systemctl", "stop", "meshvm-lab-app"); err != nil {
		t.Fatal(err)
	}
	waitEntry(t, clients, spec, m.Addresses[0], "False")
	if out, err := run(t, "--config", cfgPath, "vm", "status"); err == nil || !strings.Contains(err.Error(), "is the app answering on port 8000") {
		t.Errorf("vm status with the app down: got %v\n%s\nwant a non-zero exit naming the next step", err, out)
	}
	if _, err := lab.Exec(ctx, "e2e1", nil, "systemctl", "start", "meshvm-lab-app"); err != nil {
		t.Fatal(err)
	}
	waitEntry(t, clients, spec, m.Addresses[0], "True")

	// The files agree with istioctl's own, built from the same module, against the same cluster.
	src := filepath.Join(root, "hostctl", "labbuild")
	bins, err := labbuild.Build(ctx, labbuild.Options{ModuleDir: src, CacheDir: cacheDir()})
	if err != nil {
		t.Fatal(err)
	}
	hostIP, _ := lab.HostAddress("e2e1")
	ref := filepath.Join(work, "istioctl-files")
	cmd := exec.Command(bins.Path("istioctl"), "x", "workload", "entry", "configure", "--kubeconfig", kubeconfig,
		"-n", "vmns", "--name", "external-app", "--clusterID", "test", "--autoregister", "--externalIP", m.Addresses[0],
		"--ingressIP", hostIP, "-o", ref)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("istioctl: %v\n%s", err, out)
	}
	ours := filepath.Join(state, "vms", "e2e1", "files")
	read := func(dir, name string) []byte { b, _ := os.ReadFile(filepath.Join(dir, name)); return b }
	env := func(b []byte) map[string]string {
		m := map[string]string{}
		envfile.Parse("cluster.env", b, m)
		return m
	}
	if diff := cmp.Diff(env(read(ref, "cluster.env")), env(read(ours, "cluster.env"))); diff != "" {
		t.Errorf("cluster.env (-istioctl +meshvm):\n%s", diff)
	}
	for _, f := range []string{"mesh.yaml", "hosts", "root-cert.pem"} {
		if diff := cmp.Diff(string(read(ref, f)), string(read(ours, f))); diff != "" {
			t.Errorf("%s (-istioctl +meshvm):\n%s", f, diff)
		}
	}
	theirs, _ := credinfo.ParseToken(read(ref, "istio-token"))
	mine, _ := credinfo.ParseToken(read(ours, "istio-token"))
	if theirs.Subject != mine.Subject || strings.Join(theirs.Audiences, ",") != strings.Join(mine.Audiences, ",") {
		t.Errorf("token claims differ: istioctl %+v, meshvm %+v", theirs, mine)
	}
	// Deliberately better: secrets 0600, where istioctl writes 0744.
	for _, f := range []string{"istio-token", "cluster.env"} {
		if st, _ := os.Stat(filepath.Join(ours, f)); st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, st.Mode())
		}
	}
}

func waitEntry(t *testing.T, c workload.Clients, s workload.Spec, addr, healthy string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		e, ok, err := workload.FindEntry(context.Background(), c, s, addr)
		if err == nil && ok && e.Healthy == healthy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("WorkloadEntry for %s never became Healthy=%s (last: %+v, %v)", addr, healthy, e, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

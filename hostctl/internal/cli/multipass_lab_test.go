package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshvm/meshvm/lab/multipass"
	"github.com/meshvm/meshvm/lab/procs"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

// TestUpOnMultipass runs the recipe's own path, machines: multipass,
// through pkg/machine/multipass unchanged: the multipass on PATH is the lab's
// stand-in (lab/multipass), whose instances are lab VMs booting Debian's
// cloud-init with Multipass's base config. The cluster is the lab's API
// server and istiod taken as a cluster of yours, as TestUpOnYourCluster
// does. It checks up, vm status, a stop and start (cloud-init rewrites
// /etc/hosts on the boot, meshvm's block comes back, the VM turns Healthy
// by itself), an instance left Starting by a killed launch that the next
// up recovers, and down.
func TestUpOnMultipass(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	y := labAsYours(t, ctx, "mpe1", "mpe2")
	root, work, state, kubeconfig, hub, clients := y.root, y.work, y.state, y.kubeconfig, y.hub, y.clients
	hostIP := loadBalancerAddress(t, kubeconfig)
	go playKubeletAndLoadBalancer(ctx, clients.Kube, hostIP)

	bin := filepath.Join(work, "bin")
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "multipass"), "./lab/multipass/cmd/multipass")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the multipass stand-in: %v\n%s", err, out)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	daemon := filepath.Join(work, "multipassd")
	os.Mkdir(daemon, 0o700)
	t.Setenv(multipass.DirEnv, daemon)
	mp := func(args ...string) (string, error) {
		out, err := exec.Command("multipass", args...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { mp("delete", "--purge", "mpe1", "mpe2") })

	cfgPath := filepath.Join(work, "multipass.yaml")
	writeConfig := func(vms ...string) {
		cfg := "version: 1\nstateDir: " + state + "\ncluster:\n  provider: kubeconfig\n  kubeconfig: " + kubeconfig +
			"\nmachines: multipass\nistio:\n  hub: " + hub + "\nvms:\n"
		for _, vm := range vms {
			cfg += "- name: " + vm + "\n"
		}
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig("mpe1")
	out, err := run(t, "--config", cfgPath, "up", "--timeout", "10m")
	logOutput(t, "up on multipass", out)
	if err != nil {
		t.Fatal(err)
	}
	status := func(want int) []fleet.VMStatus {
		t.Helper()
		out, err := run(t, "--config", cfgPath, "vm", "status", "-o", "json")
		var s []fleet.VMStatus
		if jerr := json.Unmarshal([]byte(out), &s); err != nil || jerr != nil || len(s) != want {
			t.Fatalf("vm status: %v %v\n%s", err, jerr, out)
		}
		for _, vm := range s {
			if !vm.OK || vm.Healthy != "True" || vm.App != "HTTP 200" || vm.IstiodDNS != hostIP {
				t.Errorf("vm status: got %+v, want Healthy, the recipe's app answering and istiod at %s", vm, hostIP)
			}
		}
		return s
	}
	status(1)
	hosts := func(vm string) string {
		t.Helper()
		out, err := mp("exec", vm, "--", "cat", "/etc/hosts")
		if err != nil {
			t.Fatalf("cat /etc/hosts on %s: %v\n%s", vm, err, out)
		}
		return out
	}
	hostsUpdates := func(vm string) int {
		t.Helper()
		out, _ := mp("exec", vm, "--", "sudo", "grep", "-c", "Running module update_etc_hosts", "/var/log/cloud-init.log")
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		return n
	}
	if h := hosts("mpe1"); !strings.Contains(h, "managed block") || !strings.Contains(h, "manage_etc_hosts") {
		t.Errorf("/etc/hosts after up: want cloud-init's file with meshvm's block:\n%s", h)
	}
	before := hostsUpdates("mpe1")

	// Stop and start: cloud-init rewrites /etc/hosts from its template on
	// the boot; meshvm's block must be back, and the VM Healthy, with no
	// other hostctl command.
	if out, err := run(t, "--config", cfgPath, "vm", "stop", "mpe1"); err != nil {
		t.Fatalf("vm stop: %v\n%s", err, out)
	}
	if out, _ := mp("info", "mpe1", "--format", "json"); !strings.Contains(out, `"state": "Stopped"`) {
		t.Errorf("after vm stop:\n%s", out)
	}
	if out, err := run(t, "--config", cfgPath, "vm", "start", "mpe1"); err != nil {
		t.Fatalf("vm start: %v\n%s", err, out)
	}
	if after := hostsUpdates("mpe1"); after <= before {
		t.Errorf("cloud-init's update_etc_hosts ran %d times before the reboot and %d after: it did not rewrite /etc/hosts on the boot", before, after)
	}
	if h := hosts("mpe1"); !strings.Contains(h, "managed block") || !strings.Contains(h, "manage_etc_hosts") {
		t.Errorf("/etc/hosts after vm start: want cloud-init's rewritten file with meshvm's block back:\n%s", h)
	}
	status(1)

	// A launch killed mid-way leaves its instance Starting; the next up
	// brings it up and onboards it.
	launch := exec.Command("multipass", "launch", "22.04", "--name", "mpe2")
	if err := launch.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if out, _ := mp("info", "mpe2", "--format", "json"); strings.Contains(out, `"state": "Starting"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mpe2 never reported Starting")
		}
	}
	launch.Process.Signal(syscall.SIGKILL)
	launch.Wait()
	if out, _ := mp("info", "mpe2", "--format", "json"); !strings.Contains(out, `"state": "Starting"`) {
		t.Fatalf("after killing its launch mpe2 is not Starting:\n%s", out)
	}
	writeConfig("mpe1", "mpe2")
	out, err = run(t, "--config", cfgPath, "up", "--timeout", "10m")
	logOutput(t, "up after an interrupted launch", out)
	if err != nil {
		t.Fatal(err)
	}
	status(2)

	out, err = run(t, "--config", cfgPath, "down")
	logOutput(t, "down", out)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := mp("list", "--format", "json"); err != nil || strings.Contains(out, "mpe") {
		t.Errorf("instances left after down: %v\n%s", err, out)
	}
	if ns, err := clients.Kube.CoreV1().Namespaces().Get(ctx, "vmns", metav1.GetOptions{}); err == nil && ns.DeletionTimestamp == nil {
		t.Error("the workload namespace is left after down")
	}
}

// clusterOfYours brings up the lab's API server and istiod (or finds them)
// for a test that takes them as a cluster of yours, and returns the
// kubeconfig. The controller manager is stopped: it would overwrite the
// Deployment status the test writes in the kubelet's place.
// yours is the lab's cluster lent as a cluster of yours (provider
// kubeconfig, lab VMs), with a registry serving the proxy image.
type yours struct {
	root, work, state, kubeconfig, hub string
	clients                            workload.Clients
}

// labAsYours sets up the lab for vms and lends its cluster as yours.
func labAsYours(t *testing.T, ctx context.Context, vms ...string) yours {
	t.Helper()
	root, work, labCfg, state := labSetup(t, vms...)
	kubeconfig := clusterOfYours(t, ctx, labCfg, state)
	clients, err := fleet.KubeClients(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return yours{root: root, work: work, state: state, kubeconfig: kubeconfig, hub: proxyRegistry(t, root), clients: clients}
}

func clusterOfYours(t *testing.T, ctx context.Context, labCfg, state string) string {
	t.Helper()
	if out, err := run(t, "--config", labCfg, "istio", "install"); err != nil {
		if out2, err2 := run(t, "--config", labCfg, "cluster", "up", "--timeout", "50m"); err2 != nil {
			t.Fatalf("cluster up: %v\n%s\n%s", err2, out, out2)
		}
		if out, err := run(t, "--config", labCfg, "istio", "install"); err != nil {
			t.Fatalf("istio install: %v\n%s", err, out)
		}
	}
	if err := procs.Dir(filepath.Join(state, "lab", "cluster")).Stop(ctx, "kube-controller-manager", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(state, "lab", "cluster", "kubeconfig")
}

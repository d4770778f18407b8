// labbench measures onboarding on the lab and prints figures and ratios
// (never asserted):
//
//   - re-onboarding one VM (hostctl vm onboard) vs reinstalling it (vm rm,
//     then vm add: a new machine, the agent, every file), same run
//     (goal: re-onboard <= 2 s and >= 20x faster);
//   - onboarding 1, 10 and 50 fresh lab VMs with hostctl up on a running
//     control plane: wall time and growth (goal: 50 in <= 60 s, sub-linear);
//   - the agent's RSS on a lab VM after onboarding (goal <= 15 MiB);
//   - vm start to Healthy for a VM whose certificate lapsed while it was
//     off, beside one whose certificate is still valid, same run;
//   - a rolling vm upgrade of 10 VMs between two revisions: time per VM
//     beside one VM's own sidecar restart (vm onboard --restart), same run
//     (goal: the restart and re-registration dominate, ~1x).
//
// It drives the real hostctl binary against a lab of its own, as a user
// would. Run it as root with `make bench-lab` (stop `make lab` first: the
// lab's control plane ports are fixed).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/meshvm/meshvm/lab/build"
	labmachine "github.com/meshvm/meshvm/lab/labmachine"
	"github.com/meshvm/meshvm/pkg/buildinfo"
)

func main() {
	sizes := flag.String("sizes", "1,10,50", "fleet sizes to onboard, comma-separated")
	only := flag.String("only", "", "run only this part after the warm-up: upgrade")
	flag.Parse()
	if err := run(*sizes, *only); err != nil {
		fmt.Fprintln(os.Stderr, "labbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	hostctl, config string
	env             []string
}

func run(sizes, only string) error {
	src, err := filepath.Abs(".")
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "labbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	for _, b := range []struct{ out, pkg string }{{"hostctl", "./hostctl"}, {"vmagent-linux-amd64", "./vmagent"}} {
		// As make build does: the agent's RSS counts its mapped text.
		cmd := exec.Command("go", "build", "-trimpath", "-tags", buildinfo.AgentTags, "-ldflags=-s -w", "-o", filepath.Join(work, b.out), b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", b.pkg, err, out)
		}
	}
	if arch := os.Getenv("GOARCH"); arch != "" && arch != "amd64" {
		return fmt.Errorf("labbench builds the amd64 agent only")
	}
	b := &bench{hostctl: filepath.Join(work, "hostctl"), config: filepath.Join(work, "meshvm.yaml"),
		env: append(os.Environ(), "MESHVM_SOURCE="+src, "MESHVM_AGENT_DIR="+work)}
	defer func() {
		if _, err := b.hostctl1("down"); err != nil {
			fmt.Fprintln(os.Stderr, "labbench: down:", err)
		}
	}()

	// Warm up: the control plane runs and the root filesystem is cached,
	// so what follows times the VMs alone.
	fmt.Println("warming up: control plane and one VM")
	if err := b.fleet("w", 1); err != nil {
		return err
	}
	if _, err := b.hostctl1("up", "--timeout", "60m"); err != nil {
		return err
	}
	if only == "upgrade" {
		if _, err := b.hostctl1("down", "--keep-cluster"); err != nil {
			return err
		}
		return b.rollingUpgrade(10)
	}

	fmt.Println("\n== re-onboard vs reinstall (one VM)")
	reonboard, err := b.timed("vm", "onboard", "w1")
	if err != nil {
		return err
	}
	restarted, err := b.timed("vm", "onboard", "--restart", "w1")
	if err != nil {
		return err
	}
	start := time.Now()
	if _, err := b.hostctl1("vm", "rm", "w1"); err != nil {
		return err
	}
	if _, err := b.hostctl1("vm", "add", "w1"); err != nil {
		return err
	}
	reinstall := time.Since(start)
	fmt.Printf("re-onboard (vm onboard: fresh token, sidecar kept)    %6.2f s   goal <= 2 s\n", reonboard.Seconds())
	fmt.Printf("re-onboard with restart (vm onboard --restart)       %6.2f s   (Istio drains 5 s on stop)\n", restarted.Seconds())
	fmt.Printf("reinstall (vm rm + vm add)                           %6.2f s\n", reinstall.Seconds())
	fmt.Printf("ratio reinstall/re-onboard                           %6.1fx    goal >= 20x\n", reinstall.Seconds()/reonboard.Seconds())
	fmt.Printf("ratio reinstall/re-onboard with restart              %6.1fx\n", reinstall.Seconds()/restarted.Seconds())

	fmt.Println("\n== agent RSS on a lab VM after onboarding")
	// 2 s after its last call: the agent hands freed memory back after 1 s.
	time.Sleep(2 * time.Second)
	rss, err := agentRSS(work, "w1")
	if err != nil {
		return err
	}
	fmt.Printf("vmagent RSS on w1, settled   %6.1f MiB goal <= 15 MiB\n", float64(rss)/(1<<20))
	if _, err := b.hostctl1("down", "--keep-cluster"); err != nil {
		return err
	}

	if err := b.startAfterLapse(); err != nil {
		return err
	}
	if err := b.rollingUpgrade(10); err != nil {
		return err
	}

	fmt.Println("\n== onboarding fresh VMs with hostctl up (control plane running)")
	var base time.Duration
	first := 0
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-sizes: %q is not a VM count", f)
		}
		if err := b.fleet(fmt.Sprintf("n%d-", n), n); err != nil {
			return err
		}
		d, err := b.timed("up")
		if err != nil {
			return err
		}
		if first == 0 {
			first, base = n, d
		}
		growth := d.Seconds() / base.Seconds()
		fmt.Printf("%3d VM(s)  %7.1f s  %5.2f s/VM  x%.1f time for x%.0f VMs (linear would be x%.0f)\n",
			n, d.Seconds(), d.Seconds()/float64(n), growth, float64(n)/float64(first), float64(n)/float64(first))
		if _, err := b.hostctl1("down", "--keep-cluster"); err != nil {
			return err
		}
	}
	fmt.Println("goal: 50 VMs in <= 60 s, growing sub-linearly")
	return nil
}

// startAfterLapse times vm start to Healthy for a VM whose certificate
// lapsed while it was off beside one whose certificate is still valid, with
// two-minute certificates (pilot-agent renews at half-life, so the valid one
// has a minute or more left when it boots).
func (b *bench) startAfterLapse() error {
	fmt.Println("\n== vm start to Healthy: certificate lapsed while off vs still valid (2m certificates)")
	if err := b.fleet("c", 2, "workload:\n  certificateLifetime: 2m\n"); err != nil {
		return err
	}
	if _, err := b.hostctl1("up"); err != nil {
		return err
	}
	out, err := b.hostctl1("vm", "status", "c1", "-o", "json")
	if err != nil {
		return err
	}
	var st []struct {
		CertNotAfter time.Time `json:"certificateNotAfter"`
	}
	if err := json.Unmarshal(out, &st); err != nil || len(st) != 1 {
		return fmt.Errorf("vm status c1 -o json: %v\n%s", err, out)
	}
	if _, err := b.hostctl1("vm", "stop", "c1"); err != nil {
		return err
	}
	if _, err := b.hostctl1("vm", "stop", "c2"); err != nil {
		return err
	}
	valid, err := b.timed("vm", "start", "c2")
	if err != nil {
		return err
	}
	time.Sleep(time.Until(st[0].CertNotAfter.Add(5 * time.Second)))
	lapsed, err := b.timed("vm", "start", "c1")
	if err != nil {
		return err
	}
	fmt.Printf("vm start, certificate still valid                    %6.2f s\n", valid.Seconds())
	fmt.Printf("vm start, certificate lapsed while off (token used)  %6.2f s\n", lapsed.Seconds())
	fmt.Printf("ratio lapsed/valid                                   %6.2fx   goal ~1x: a lapse costs one certificate request\n", lapsed.Seconds()/valid.Seconds())
	_, err = b.hostctl1("down", "--keep-cluster")
	return err
}

// rollingUpgrade onboards n VMs on the default revision, starts a canary
// revision's istiod beside it and times vm upgrade moving them all, one at
// a time; the baseline is one VM's own sidecar restart and re-registration.
func (b *bench) rollingUpgrade(n int) error {
	fmt.Printf("\n== rolling vm upgrade of %d VMs, default -> canary revision\n", n)
	if err := b.fleet("u", n); err != nil {
		return err
	}
	if _, err := b.hostctl1("up"); err != nil {
		return err
	}
	restart, err := b.timed("vm", "onboard", "--restart", "u1")
	if err != nil {
		return err
	}
	if err := b.fleet("u", n, "istio:\n  revision: canary\n"); err != nil {
		return err
	}
	if _, err := b.hostctl1("up"); err != nil {
		return err
	}
	start := time.Now()
	out, err := b.hostctl1("vm", "upgrade", "--revision", "canary")
	if err != nil {
		return err
	}
	total := time.Since(start)
	var longest time.Duration
	for _, m := range movedIn.FindAllStringSubmatch(string(out), -1) {
		if d, err := time.ParseDuration(m[1]); err == nil && d > longest {
			longest = d
		}
	}
	perVM := total / time.Duration(n)
	fmt.Printf("one VM's sidecar restart to Healthy (vm onboard --restart)  %6.2f s\n", restart.Seconds())
	fmt.Printf("vm upgrade of %d VMs, one at a time                         %6.2f s  (%.2f s per VM)\n", n, total.Seconds(), perVM.Seconds())
	fmt.Printf("longest single VM move                                     %6.2f s\n", longest.Seconds())
	fmt.Printf("ratio per-VM upgrade / own restart                          %6.2fx   goal ~1x: the restart and re-registration dominate\n", perVM.Seconds()/restart.Seconds())
	fmt.Printf("ratio longest move / own restart                            %6.2fx   goal ~1x: no VM unhealthy longer than its own restart\n", longest.Seconds()/restart.Seconds())
	_, err = b.hostctl1("down", "--keep-cluster")
	return err
}

// movedIn reads each VM's move time from vm upgrade's progress.
var movedIn = regexp.MustCompile(`moved from [a-z0-9-]+ in ([0-9.]+m?s)`)

// fleet writes a config listing n VMs named prefix1..prefixN, with extra
// top-level YAML.
func (b *bench) fleet(prefix string, n int, extra ...string) error {
	cfg := "version: 1\ncluster:\n  provider: lab\nvms:\n"
	for i := 1; i <= n; i++ {
		cfg += fmt.Sprintf("- name: %s%d\n", prefix, i)
	}
	cfg += strings.Join(extra, "")
	return os.WriteFile(b.config, []byte(cfg), 0o600)
}

func (b *bench) hostctl1(args ...string) ([]byte, error) {
	cmd := exec.Command(b.hostctl, append([]string{"--config", b.config}, args...)...)
	cmd.Env = b.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("hostctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

func (b *bench) timed(args ...string) (time.Duration, error) {
	start := time.Now()
	_, err := b.hostctl1(args...)
	return time.Since(start), err
}

// agentRSS reads vmagent's resident set inside the VM.
func agentRSS(work, vm string) (int64, error) {
	lab := labmachine.New(slog.New(slog.NewTextHandler(io.Discard, nil)), filepath.Join(work, ".meshvm", "lab", "vms"), build.DefaultCacheDir())
	out, err := lab.Exec(context.Background(), vm, nil, "sh", "-c",
		"awk '/^VmRSS:/ {print $2}' /proc/$(systemctl show -p MainPID --value vmagent.service)/status")
	if err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	return kib << 10, err
}

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshvm/meshvm/bench/internal/measure"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/agentwatch"
	"github.com/meshvm/meshvm/pkg/mtls"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

// watchPlan is what the watching process is given: the agents and how to
// look at them. The watching side runs in its own process so its memory and
// processor time are its own, not the simulated fleet's.
type watchPlan struct {
	Mode string // "watch": agentwatch's streams; "poll": GetStatus every PollInterval
	// PollInterval is the baseline's period.
	PollInterval time.Duration
	AppPort      int
	CA           []byte
	Cert, Key    []byte
	VMs          []watchVM
}

type watchVM struct{ Name, Address string }

// watchChild is the watching process: it prints "<vm> <connected> <sidecar
// active state>" on each update (a change of either).
func watchChild(planPath string) error {
	raw, err := os.ReadFile(planPath)
	if err != nil {
		return err
	}
	var plan watchPlan
	if err := json.Unmarshal(raw, &plan); err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	emit := func(vm string, connected bool, active string) {
		mu.Lock()
		fmt.Fprintf(out, "%s %t %s\n", vm, connected, active)
		out.Flush()
		mu.Unlock()
	}
	tlsFor := func(vm watchVM) (*tls.Config, error) {
		return mtls.ClientConfig(plan.Cert, plan.Key, plan.CA, vm.Address)
	}
	switch plan.Mode {
	case "watch":
		last := map[string]string{}
		var lmu sync.Mutex
		w := agentwatch.New(func(u agentwatch.Update) {
			key := fmt.Sprintf("%t %s", u.Connected, u.State.GetSidecar().GetActiveState())
			lmu.Lock()
			changed := last[u.VM] != key
			last[u.VM] = key
			lmu.Unlock()
			if changed {
				emit(u.VM, u.Connected, u.State.GetSidecar().GetActiveState())
			}
		}, agentwatch.Options{})
		for _, vm := range plan.VMs {
			cfg, err := tlsFor(vm)
			if err != nil {
				return err
			}
			w.Ensure(vm.Name, agentwatch.Target{Address: net.JoinHostPort(vm.Address, "7443"), TLS: cfg,
				AppProbe: &agentv1.ProbeRequest{Kind: agentv1.ProbeKind_PROBE_KIND_HTTP, Host: vm.Address, Port: uint32(plan.AppPort), Path: "/"}})
		}
	case "poll":
		for i, vm := range plan.VMs {
			cfg, err := tlsFor(vm)
			if err != nil {
				return err
			}
			// Spread over one period, as a periodic look with jitter would be.
			offset := time.Duration(int64(plan.PollInterval) * int64(i) / int64(len(plan.VMs)))
			go poll(vm, cfg, offset, plan.PollInterval, emit)
		}
	default:
		return fmt.Errorf("mode %q: want watch or poll", plan.Mode)
	}
	// Until the parent closes stdin.
	io.Copy(io.Discard, os.Stdin)
	return nil
}

func poll(vm watchVM, cfg *tls.Config, offset, every time.Duration, emit func(string, bool, string)) {
	time.Sleep(offset)
	c, err := agentclient.Dial(net.JoinHostPort(vm.Address, "7443"), cfg)
	if err != nil {
		emit(vm.Name, false, "dial-failed")
		return
	}
	defer c.Close()
	last := ""
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := c.Status(ctx)
		cancel()
		key := "false -"
		if err == nil {
			key = "true " + st.GetSidecar().GetActiveState()
		}
		if key != last {
			last = key
			connected, active, _ := strings.Cut(key, " ")
			emit(vm.Name, connected == "true", active)
		}
		<-t.C
	}
}

// watcher is the parent's side of the watching process.
type watcher struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	start time.Time

	mu       sync.Mutex
	open     map[string]bool
	allOpen  chan struct{}
	n        int
	waiting  map[string]chan time.Time // vm -> when it was seen not active
	openedAt time.Duration
}

func startWatcher(plan watchPlan, dir string) (*watcher, error) {
	raw, err := json.Marshal(plan)
	if err != nil {
		return nil, err
	}
	path := dir + "/watch-plan-" + plan.Mode + "-" + strconv.Itoa(len(plan.VMs)) + ".json"
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-watch-child", path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	w := &watcher{cmd: cmd, stdin: stdin, open: map[string]bool{}, allOpen: make(chan struct{}), n: len(plan.VMs), waiting: map[string]chan time.Time{}}
	w.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go w.read(stdout)
	return w, nil
}

func (w *watcher) read(r io.Reader) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		now := time.Now()
		f := strings.Fields(s.Text())
		if len(f) != 3 {
			continue
		}
		vm, connected, active := f[0], f[1] == "true", f[2]
		w.mu.Lock()
		if connected && !w.open[vm] {
			w.open[vm] = true
			if len(w.open) == w.n {
				w.openedAt = now.Sub(w.start)
				close(w.allOpen)
			}
		}
		if ch, ok := w.waiting[vm]; ok && active != "active" {
			ch <- now
			delete(w.waiting, vm)
		}
		w.mu.Unlock()
	}
}

// waitOpen waits until every VM was seen connected.
func (w *watcher) waitOpen(timeout time.Duration) (time.Duration, error) {
	select {
	case <-w.allOpen:
		return w.openedAt, nil
	case <-time.After(timeout):
		w.mu.Lock()
		defer w.mu.Unlock()
		return 0, fmt.Errorf("%d of %d VMs connected after %s", len(w.open), w.n, timeout)
	}
}

// expectStop arms a wait for vm to be seen not active.
func (w *watcher) expectStop(vm string) chan time.Time {
	ch := make(chan time.Time, 1)
	w.mu.Lock()
	w.waiting[vm] = ch
	w.mu.Unlock()
	return ch
}

func (w *watcher) rss() int64 {
	b, _ := measure.RSS(w.cmd.Process.Pid)
	return b
}

func (w *watcher) cpu() time.Duration {
	d, _ := measure.CPU(w.cmd.Process.Pid)
	return d
}

func (w *watcher) stop() {
	w.stdin.Close()
	w.cmd.Wait()
}

package flood

import (
	"context"
	"testing"
	"time"

	"github.com/meshvm/meshvm/bench/internal/agentproc"
)

// The limits with short timeouts, so that what a flood holds is let go
// within the test's seconds; the counts are the defaults.
const testLimits = `limits:
  handshake_timeout: 2s
  first_call_timeout: 3s
  request_timeout: 3s
  delivery_idle_timeout: 2s
  log_send_timeout: 3s
`

// Budgets the agent must stay under with any one flood holding, far below
// what each took before the limits (122 MiB to 1 GiB, 10,010 fds, 800
// journalctl children): the limits' sum is about 150 MiB.
const (
	rssBudget      = 160 // MiB, the agent's peak resident set
	fdBudget       = 64 + 32 + 64
	childrenBudget = 4 + 2 // max_log_streams + max_process_calls
)

// The real vmagent, as its unit runs it (GOMEMLIMIT=64MiB, MemoryMax=256M
// as a memory cgroup where one can be made), flooded over real TLS on
// loopback by each attack in turn. Between the attacks' start and stop the
// agent must stay alive and under its budgets, keep serving the caller
// that was connected before (whose log stream stays open throughout), and
// serve a new caller. Sizes are bounded; `make bench` runs the larger ones.
func TestAgentHoldsUnderFloods(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and floods a real agent")
	}
	work := t.TempDir()
	bin, err := agentproc.Build(work)
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := agentproc.NewFleet(bin, work)
	if err != nil {
		t.Fatal(err)
	}
	fleet.Config, fleet.Env = testLimits, []string{"GOMEMLIMIT=64MiB"}
	cg, err := agentproc.NewMemoryCgroup("meshvm-flood-test", 256<<20)
	if err != nil {
		t.Logf("no MemoryMax emulation (%v): judging by the agent's resident set alone", err)
	} else {
		t.Cleanup(func() { cg.Remove() }) // after the agent has stopped
	}
	agent, err := fleet.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fleet.Stop)
	pid := agent.Cmd.Process.Pid
	if cg != nil {
		if err := cg.Add(pid); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := Prepare(ctx, Target{Addr: agent.Addr, ClientTLS: fleet.ClientTLS}, pid, fleet.RootOf(0))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Legit.Close()

	sizes := map[string]int{
		"TCP connections that send nothing":                       1500,
		"TLS ClientHellos, never finished":                        1500,
		"idle connections with no call":                           200,
		"delivery streams that send and wait (16 per connection)": 8 * perConnection,
		"SidecarLogs(PROXY_LOG, follow) never read":               200,
		"SidecarLogs(JOURNAL, follow)":                            100,
		"half-sent messages (16 per connection)":                  16 * perConnection,
		"stalled HTTP/2 header blocks":                            64,
		"deliveries trickling a byte a second":                    6,
	}
	for _, at := range Attacks {
		t.Run(at.Name, func(t *testing.T) {
			r, err := Measure(ctx, a, at, sizes[at.Name], 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Log(r)
			if !r.Alive {
				t.Fatalf("the agent died under %d %s", r.N, at.Name)
			}
			if r.PeakRSS > rssBudget {
				t.Errorf("peak RSS %.1f MiB, want under %d MiB", r.PeakRSS, rssBudget)
			}
			if r.FDs > fdBudget {
				t.Errorf("%d descriptors held, want at most %d (connections are capped)", r.FDs, fdBudget)
			}
			if r.Children > childrenBudget {
				t.Errorf("%d child processes, want at most %d", r.Children, childrenBudget)
			}
			if r.Established != nil {
				t.Errorf("the established caller was not served: %v", r.Established)
			}
			if r.Fresh != nil {
				t.Errorf("a new caller was not served within 15 s: %v", r.Fresh)
			}
			if r.Check != nil {
				// What the attack tried to deny (a real delivery past the trickles) got through.
				t.Errorf("%s while the attack held: %v", at.Name, r.Check)
			}
		})
	}
	if err := a.StreamEnded(); err != nil {
		t.Errorf("the established caller's log stream was cut: %v", err)
	}
	if cg != nil {
		if kills, err := cg.OOMKills(); err != nil || kills != 0 {
			t.Errorf("OOM kills under MemoryMax: %d (%v), want none", kills, err)
		}
		peak, _ := cg.PeakMiB()
		t.Logf("memory cgroup peak (the agent, its children, its page cache): %.1f MiB of 256", peak)
	}
}

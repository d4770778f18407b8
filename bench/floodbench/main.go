// floodbench floods the real vmagent with each attack that once brought it
// down, at the sizes first measured, and prints per attack the agent's peak
// RSS, descriptors and children while the flood holds, and whether a valid
// caller was served on its open connection and on a new one. The agent runs
// as its unit does (GOMEMLIMIT=64MiB, MemoryMax=256M as a memory cgroup when
// one can be made) with the default limits. Run it with `make bench`.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/meshvm/meshvm/bench/internal/agentproc"
	"github.com/meshvm/meshvm/bench/internal/flood"
)

// sizes are the attacks' sizes when the floods were first measured.
var sizes = map[string]int{
	"TCP connections that send nothing":                       10000,
	"TLS ClientHellos, never finished":                        8000,
	"idle connections with no call":                           8000,
	"delivery streams that send and wait (16 per connection)": 8 * 16,
	"SidecarLogs(PROXY_LOG, follow) never read":               1600,
	"SidecarLogs(JOURNAL, follow)":                            800,
	"half-sent messages (16 per connection)":                  32 * 16,
	"stalled HTTP/2 header blocks":                            64,
	"deliveries trickling a byte a second":                    6,
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "floodbench:", err)
		os.Exit(1)
	}
}

func run() error {
	fleet, err := agentproc.BuildFleet("floodbench")
	if err != nil {
		return err
	}
	defer fleet.Close()
	fleet.Env = []string{"GOMEMLIMIT=64MiB"}
	cg, cgErr := agentproc.NewMemoryCgroup(fmt.Sprintf("meshvm-floodbench-%d", os.Getpid()), 256<<20)
	if cg != nil {
		defer cg.Remove()
	}
	agent, err := fleet.Start()
	if err != nil {
		return err
	}
	if cg != nil {
		if err := cg.Add(agent.Cmd.Process.Pid); err != nil {
			return err
		}
		fmt.Println("agent: GOMEMLIMIT=64MiB, in a memory cgroup limited to 256 MiB (the unit's MemoryMax)")
	} else {
		fmt.Printf("agent: GOMEMLIMIT=64MiB; no MemoryMax emulation (%v)\n", cgErr)
	}
	ctx := context.Background()
	a, err := flood.Prepare(ctx, flood.Target{Addr: agent.Addr, ClientTLS: fleet.ClientTLS}, agent.Cmd.Process.Pid, fleet.RootOf(0))
	if err != nil {
		return err
	}
	defer a.Legit.Close()
	idle, _ := agentproc.RSSMiB(agent.Cmd.Process.Pid)
	fmt.Printf("agent RSS before the floods: %.1f MiB; default limits (SECURITY.md)\n\n", idle)
	fmt.Printf("%-58s %-13s %6s\n", "attack", "caller", "count")
	for _, at := range flood.Attacks {
		r, err := flood.Measure(ctx, a, at, sizes[at.Name], 20*time.Second)
		if err != nil {
			return err
		}
		fmt.Println(r)
		if !r.Alive {
			break
		}
		time.Sleep(2 * time.Second) // what the flood held is let go
	}
	fmt.Printf("\nthe established caller's log stream: %s\n", errOrOK(a.StreamEnded()))
	if cg != nil {
		peak, _ := cg.PeakMiB()
		kills, _ := cg.OOMKills()
		fmt.Printf("memory cgroup: peak %.1f MiB of 256 (the agent, its children, its page cache), OOM kills %d\n", peak, kills)
	}
	return nil
}

func errOrOK(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

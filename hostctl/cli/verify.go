package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/onboard"
	"github.com/meshvm/meshvm/pkg/workloadfiles"
	agentv1 "github.com/meshvm/meshvm/proto/meshvm/agent/v1"
)

type verifyCmd struct {
	g        *globals
	provider string
	output   string
}

func (c *verifyCmd) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Run the recipe's closing checks: istiod resolves on the VM, and traffic both ways",
		Args:  cobra.NoArgs,
		RunE:  c.run,
	}
	cmd.Flags().StringVar(&c.provider, "provider", "", "override cluster.provider (lab|multipass|ssh|kubeconfig)")
	cmd.Flags().StringVarP(&c.output, "output", "o", "table", "output format: table|json")
	return cmd
}

// verdict is one line of the report: ok, FAIL, or skipped (with why).
type verdict struct {
	VM     string `json:"vm"`
	Check  string `json:"check"`
	Result string `json:"result"`
	Detail string `json:"detail,omitempty"`
}

func (c *verifyCmd) run(cmd *cobra.Command, _ []string) error {
	if c.output != "table" && c.output != "json" {
		return fmt.Errorf("--output %q: want table or json", c.output)
	}
	cfg, state, s, err := c.g.open(cmd, c.provider)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
	defer cancel()
	istiod := workloadfiles.IstiodHost("istio-system", "")
	var out []verdict
	failed := 0
	for _, vm := range cfg.VMs {
		m, err := s.machines().Info(ctx, vm.Name)
		if err != nil || m.State != "Running" {
			out = append(out, verdict{vm.Name, "VM running", "FAIL", "run hostctl up"})
			failed++
			continue
		}
		want, err := s.istiodAddress(ctx, vm.Name)
		if err != nil {
			out = append(out, verdict{vm.Name, "istiod resolves on the VM", "FAIL", err.Error()})
			failed++
			continue
		}
		v := verdict{vm.Name, "istiod resolves on the VM", "FAIL", ""}
		if ac, err := onboard.Dial(state, m.Addresses[0]); err != nil {
			v.Detail = err.Error()
		} else {
			r, err := ac.API().ResolveDNS(ctx, &agentv1.ResolveDNSRequest{Name: istiod})
			ac.Close()
			switch {
			case err != nil:
				v.Detail = err.Error()
			case r.GetError() != "":
				v.Detail = r.GetError()
			case len(r.GetAddresses()) > 0 && r.GetAddresses()[0] == want:
				v.Result, v.Detail = "ok", fmt.Sprintf("%s -> %s via %s", istiod, want, r.GetServer())
			default:
				v.Detail = fmt.Sprintf("%s -> %s, want %s: run hostctl up to rewrite the hosts block", istiod, strings.Join(r.GetAddresses(), ","), want)
			}
		}
		if v.Result != "ok" {
			failed++
		}
		// Without a data path to check, a result would only pretend.
		why := "not checked: " + s.trafficUncheckable()
		out = append(out, v,
			verdict{vm.Name, "VM -> helloworld.sample:5000/hello", "skipped", why},
			verdict{vm.Name, fmt.Sprintf("mesh -> %s.%s:%d", cfg.Workload.Group, cfg.Workload.Namespace, cfg.Workload.Port), "skipped", why})
	}
	if c.output == "json" {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VM\tCHECK\tRESULT\tDETAIL")
		for _, v := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.VM, v.Check, v.Result, v.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d check(s) failed", failed)
	}
	return nil
}

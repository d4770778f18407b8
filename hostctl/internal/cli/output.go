package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/report"
)

// outputFlag adds -o to a command that reports state: formats[0] is the
// default. An unknown format is refused before the command does anything.
func outputFlag(cmd *cobra.Command, format *string, formats ...string) *cobra.Command {
	want := strings.Join(formats, "|")
	cmd.Flags().StringVarP(format, "output", "o", formats[0], "output format: "+want)
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
	pre := cmd.PreRunE
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if !slices.Contains(formats, *format) {
			return usageErrorf("--output %q: want %s", *format, want)
		}
		if pre != nil {
			return pre(cmd, args)
		}
		return nil
	}
	return cmd
}

// render prints rows as json, yaml, or a table of header and cells per row.
func render[T any](w io.Writer, format string, rows []T, header []string, cells func(T) []string) error {
	if rows == nil {
		rows = []T{} // [] rather than null for scripts
	}
	if ok, err := report.Encode(w, format, rows); ok {
		return err
	}
	if format != "table" {
		return fmt.Errorf("--output %q: want table, json or yaml", format)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(cells(r), "\t"))
	}
	return tw.Flush()
}

// sayer prints a command's lines on w, each after prefix, one at a time.
func sayer(w io.Writer, prefix string) progress.Reporter {
	return newLines(w, prefix).Reporter()
}

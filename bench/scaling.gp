# scaling.gp: one scaling plot of `./dev bench` (bench/e2e.sh calls it).
# Set on the command line (gnuplot -e): datafile (columns: x, payments/s,
# p99 ms), out (the PNG), xlabel, title, logx (1: log scale on x).
set terminal pngcairo size 900,540 font "sans,10"
set output out
set title title
set xlabel xlabel
set ylabel "payments/s (median)"
set y2label "p99 latency, ms (median)"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set grid
set key top left
if (logx) { set logscale x 2 }
set xtics 1
if (logx) { set xtics 2 }
plot datafile using 1:2 with linespoints lw 2 pt 7 title "payments/s" axes x1y1, \
     datafile using 1:3 with linespoints lw 2 pt 5 dt 2 title "p99 ms" axes x1y2

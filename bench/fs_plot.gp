# bench/fs_plot.gp — the plot of the filesystem benchmark, made by fs_bench.sh:
#   gnuplot -e "datafile='plot.dat'; outfile='fs.png'; subtitle='...'" fs_plot.gp
# plot.dat: one line per workload: "label" passthrough_ll-speed/ext4-speed kvfs-speed/ext4-speed
if (!exists("subtitle")) subtitle = ""
set terminal pngcairo size 1100,620 font "DejaVu Sans,10"
set output outfile
set title "kvfs and passthrough\\_ll, speed relative to native ext4 (1 = as fast as ext4; log scale)\n{/*0.85 ".subtitle."}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y 2
set yrange [1.0/64:8]
set ytics ("1/64" 1.0/64, "1/32" 1.0/32, "1/16" 1.0/16, "1/8" 0.125, "1/4" 0.25, "1/2" 0.5, "1" 1, "2" 2, "4" 4, "8" 8)
set grid ytics
set xtics rotate by -35 left font ",9" nomirror
set key top right
set bmargin 7
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 lc rgb "#444444"
plot datafile using 2:xtic(1) title "passthrough\\_ll" lc rgb "#8da0cb", \
     ""       using 3        title "kvfs" lc rgb "#fc8d62"

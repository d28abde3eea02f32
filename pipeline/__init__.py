"""segpipe: annotation files in, validated masks, a sticky split, a U-Net and IoU reports out."""

"""Static files of the welcome page, packaged with the gateway."""
